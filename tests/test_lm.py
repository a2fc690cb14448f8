"""Language models: cached decoding, truncated BPTT, perplexity, sampling, training through the engine."""

import math

import pytest
import torch
import torch.nn.functional as F

from attnlab.decode.sampling import filter_logits, generate, greedy, sample_next, validate_sampling
from attnlab.errors import ConfigError, DataError, ShapeError
from attnlab.models import create_model
from attnlab.models.lm import (
    RecurrentLM,
    TransformerLM,
    context_start,
    count_parameters,
    lm_config,
    lm_config_from_dict,
    lm_config_to_dict,
)
from attnlab.tasks.lm import LMTask, evaluate_ids
from attnlab.train.sampler import Plan

pytestmark = pytest.mark.usefixtures("one_thread")

def tiny_transformer(position="learned", max_len=16, vocab=13):
    return TransformerLM(lm_config("transformer", vocab_size=vocab, d_model=32, num_layers=2, num_heads=4,
                                   max_len=max_len, position=position)).eval()


# --- models ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rotary"])
def test_cached_generation_equals_uncached_token_for_token(position):
    model = tiny_transformer(position, max_len=16)
    with torch.no_grad():  # sharpen the random model so greedy choices are not near-ties
        model.head.weight.mul_(20)
    prompt = torch.randint(0, 13, (3, 5))
    cached = greedy(model.stepper(cached=True), prompt, 40)  # 45 tokens: past the 16-token context twice
    uncached = greedy(model.stepper(cached=False), prompt, 40)
    assert torch.equal(cached, uncached)


def test_cached_logits_match_full_forward():
    model = tiny_transformer("rotary", max_len=32)
    x = torch.randint(0, 13, (2, 12))
    full = model(x)
    cache = model.new_cache()
    parts = [model(x[:, :5], cache=cache), model(x[:, 5:6], cache=cache), model(x[:, 6:], cache=cache)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


def test_token_embeddings_meet_fixed_sinusoids_at_their_scale():
    """x = √d·E[idx] + PE with E ~ N(0, 1/d) for fixed sinusoids (Vaswani §3.4): the token part has
    about the unit scale of the sinusoids (RMS 1/√2 per channel), instead of 0.02 against 0.7, where
    positions drown the tokens. Learned tables keep GPT's 0.02 for both, unscaled."""
    torch.manual_seed(0)
    idx = torch.arange(13).repeat(40, 1)
    sin = TransformerLM(lm_config("transformer", vocab_size=13, d_model=256, num_layers=1, num_heads=4,
                                  max_len=16, position="sinusoidal"))
    assert sin.embed_tokens(idx).std().item() == pytest.approx(1.0, rel=0.1)
    assert sin.pos.table.pow(2).mean().sqrt().item() == pytest.approx(0.5 ** 0.5, rel=0.01)
    learned = TransformerLM(lm_config("transformer", vocab_size=13, d_model=256, num_layers=1, num_heads=4, max_len=16))
    assert learned.embed_tokens(idx).std().item() == pytest.approx(0.02, rel=0.1)
    torch.testing.assert_close(learned.embed_tokens(idx), learned.embed(idx))


def test_context_start_jumps_by_half_windows():
    assert [context_start(t, 8) for t in (1, 8, 9, 12, 13, 16, 17)] == [0, 0, 4, 4, 8, 8, 12]


def test_weight_tying_and_configs():
    m = tiny_transformer()
    assert m.head.weight is m.embed.weight
    r = RecurrentLM(lm_config("lstm", vocab_size=20, embed_dim=8, hidden_dim=8, tie_weights=True))
    assert r.head.weight is r.embed.weight
    assert count_parameters(r) == 20 * 8 + 2 * (4 * 8 * (8 + 8) + 2 * 4 * 8) + 20
    with pytest.raises(ConfigError, match="embed_dim == hidden_dim"):
        lm_config("gru", embed_dim=8, hidden_dim=16, tie_weights=True)
    with pytest.raises(ConfigError, match="unknown language model"):
        lm_config("mamba")
    with pytest.raises(ConfigError, match="no option"):
        lm_config("transformer", hidden_dim=3)
    cfg = lm_config("gru", vocab_size=5, hidden_dim=4, embed_dim=4)
    assert lm_config_from_dict(lm_config_to_dict(cfg)) == cfg
    with pytest.raises(ShapeError):
        m(torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_recurrent_state_carry_equals_one_long_pass(cell):
    m = RecurrentLM(lm_config(cell, vocab_size=11, embed_dim=8, hidden_dim=8)).eval()
    x = torch.randint(0, 11, (2, 20))
    full, _ = m(x)
    a, h = m(x[:, :7])
    b, _ = m(x[:, 7:], h)
    torch.testing.assert_close(torch.cat([a, b], 1), full, atol=1e-6, rtol=1e-5)


def _graph_size(t: torch.Tensor) -> int:
    seen, todo = set(), [t.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        todo.extend(f for f, _ in fn.next_functions)
    return len(seen)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_truncated_bptt_carry_is_detached(cell):
    ids = torch.randint(0, 11, (400,))
    task = LMTask({"train": ids, "valid": ids[:50]}, recurrent=True, window=8)
    model = RecurrentLM(lm_config(cell, vocab_size=11, embed_dim=8, hidden_dim=8))
    plan = Plan(batch_size=4)
    sizes = []
    for k, micro in enumerate(task.train_batches(plan)):
        loss, stats = task.train_step(model, micro[0], None)
        loss.backward()
        sizes.append(_graph_size(loss))
        h = task.hidden[0]
        for t in (h if isinstance(h, tuple) else (h,)):
            assert t.grad_fn is None and not t.requires_grad
            assert t.abs().sum() > 0  # the values are carried, only the history is cut
        if k == 4:
            break
    assert len(set(sizes)) == 1  # the graph does not grow from window to window


# --- perplexity --------------------------------------------------------------------------------------

class Uniform(torch.nn.Module):
    is_recurrent = False

    def __init__(self, v):
        super().__init__()
        self.v = v

    def forward(self, x):
        return torch.zeros(*x.shape, self.v)


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    r = evaluate_ids(Uniform(7), torch.randint(0, 7, (50,)), window=8, char_level=True)
    assert r["ppl"] == pytest.approx(7.0) and r["tokens"] == 49
    assert r["bpc"] == pytest.approx(math.log2(7))


def test_perplexity_by_hand_recurrent_and_transformer():
    ids = torch.randint(0, 11, (37,))
    # recurrent, one row: carrying the state across windows is one pass over the whole stream
    m = RecurrentLM(lm_config("gru", vocab_size=11, embed_dim=8, hidden_dim=8)).eval()
    with torch.no_grad():
        logp = m(ids[None, :-1])[0].log_softmax(-1)[0]
    nll = -sum(float(logp[t, ids[t + 1]]) for t in range(36))
    ours = evaluate_ids(m, ids, window=5, char_level=False, eval_batch_size=1)
    assert ours["ppl"] == pytest.approx(math.exp(nll / 36), rel=1e-5)
    # transformer: non-overlapping windows of 8, each from an empty context; a final partial window
    t = tiny_transformer(max_len=8, vocab=11)
    nll, n = 0.0, 0
    for s in range(0, 36, 8):
        x, y = ids[s : min(s + 8, 36)], ids[s + 1 : min(s + 9, 37)]
        with torch.no_grad():
            nll += float(F.cross_entropy(t(x[None])[0], y, reduction="sum"))
        n += y.numel()
    ours = evaluate_ids(t, ids, window=8, char_level=False)
    assert n == 36 and ours["tokens"] == 36
    assert ours["ppl"] == pytest.approx(math.exp(nll / n), rel=1e-5)


# --- sampling ----------------------------------------------------------------------------------------

def test_filters_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(filter_logits(logits, top_k=2)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.7)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.8)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.81)).tolist() == [[True, True, True, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.1)).tolist() == [[True, False, False, False]]
    assert sample_next(logits, temperature=0.0).tolist() == [0]
    g = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits, top_k=2, generator=g)) for _ in range(100)}
    assert draws == {0, 1}


@pytest.mark.parametrize("kw", [{"temperature": -1.0}, {"top_k": 0}, {"top_p": 0.0}, {"top_p": 1.5},
                                {"temperature": float("nan")}])
def test_sampling_options_are_validated(kw):
    with pytest.raises(ConfigError):
        validate_sampling(**kw)


def test_generate_is_reproducible_with_a_seed_and_stops_at_eos():
    m = tiny_transformer("rotary", max_len=64)
    p = torch.randint(0, 13, (2, 3))
    run = lambda seed: generate(m.stepper(), p, 20, temperature=1.0, top_k=5, top_p=0.9,  # noqa: E731
                                generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))
    r = RecurrentLM(lm_config("lstm", vocab_size=13, embed_dim=8, hidden_dim=8))
    with torch.no_grad():
        r.head.bias[4] = 100.0  # always predicts token 4
    out = generate(r.stepper(), p, 10, eos_id=4)
    assert out.shape == (2, 4) and (out[:, -1] == 4).all()


# --- training through the engine ---------------------------------------------------------------------

MODELS = {"lstm": ("lstm_lm_small", {"hidden_dim": 24, "embed_dim": 24, "num_layers": 1, "tie_weights": True}),
          "gru": ("gru_lm_small", {"hidden_dim": 24, "embed_dim": 24, "num_layers": 1, "tie_weights": True}),
          "transformer": ("transformer_lm_char", {"d_model": 32, "num_layers": 1, "num_heads": 2})}


def _train(tmp_path, model, epochs, resume=False, name="run", save_every=0, **data):
    from attnlab.runs import train
    from attnlab.tasks.lm import SPEC, LMDataConfig
    from attnlab.train.config import TrainConfig

    text = tmp_path / "t.txt"
    if not text.exists():
        text.write_text("abcdefgh ijklmnop\n" * 150)
    dc = LMDataConfig(text=str(text), window=data.get("window", 12), steps_per_epoch=data.get("steps"))
    cfg = TrainConfig(epochs=epochs, batch_size=8, lr=1e-2, min_lr=1e-3, warmup_steps=5, weight_decay=0.0, log_every=5,
                      save_every=save_every)
    name_, args = MODELS[model]
    return train(SPEC, dc, cfg, tmp_path / name, model=name_, model_args=args, log=None, progress=False, resume=resume,
                 overwrite=True)


@pytest.mark.parametrize("model", ["lstm", "transformer"])
def test_training_learns_a_repetitive_text(tmp_path, model):
    s = _train(tmp_path, model, 3, steps=25)
    import json

    steps = json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"]
    assert steps[0]["loss"] > 2.0  # about log(19) at the start
    assert s["metrics"]["val_loss"] < 0.5
    assert (tmp_path / "run" / "tokenizer.json").is_file() and (tmp_path / "run" / "curves.png").is_file()


def test_resume_retraces_the_uninterrupted_run_with_the_carried_state(tmp_path, monkeypatch):
    """Stop mid-epoch (after a mid-epoch save), resume: the weights equal those of the run that did not
    stop, which needs the carried hidden state to be saved and restored."""
    from attnlab.runs import open as load

    full = _train(tmp_path, "gru", 2, name="full", save_every=4)
    calls = {"n": 0}
    step = LMTask.train_step

    def crash(self, *a):
        calls["n"] += 1
        if calls["n"] == 11:
            raise KeyboardInterrupt
        return step(self, *a)

    monkeypatch.setattr(LMTask, "train_step", crash)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, "gru", 2, name="part", save_every=4)
    monkeypatch.setattr(LMTask, "train_step", step)
    resumed = _train(tmp_path, "gru", 2, name="part", save_every=4, resume=True)
    assert resumed["steps"] == full["steps"]
    a, b = load(tmp_path / "full", "last").model, load(tmp_path / "part", "last").model
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(va, vb, msg=k)


def test_window_longer_than_the_split_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="window of 3000 tokens is longer than the training split"):
        _train(tmp_path, "transformer", 1, window=3000)


def test_real_text_smoke(shared_data, tmp_path):
    """A slice of Tiny Shakespeare: a small Transformer gets well below the unigram entropy."""
    from attnlab.runs import train
    from attnlab.tasks.lm import SPEC, LMDataConfig
    from attnlab.train.config import TrainConfig

    text = (shared_data / "tinyshakespeare" / "input.txt").read_text()[:40000]
    (tmp_path / "ts.txt").write_text(text)
    dc = LMDataConfig(text=str(tmp_path / "ts.txt"), window=32, steps_per_epoch=60)
    cfg = TrainConfig(epochs=1, batch_size=16, lr=3e-3, min_lr=3e-4, warmup_steps=10, weight_decay=0.0)
    s = train(SPEC, dc, cfg, None, model="transformer_lm_char", model_args={"d_model": 48, "num_layers": 2},
              log=None, progress=False)
    assert s["metrics"]["val_loss"] < 2.9  # uniform over ~60 characters is 4.1, unigram about 3.3


@pytest.mark.parametrize("name", ["transformer_lm_char", "gru_lm_small"])
def test_stepper_select_reorders_rows_like_decoding_them_apart(name):
    """The one step protocol: after ``select`` the rows continue as if decoded one by one."""
    torch.manual_seed(0)
    m = create_model(name, vocab_size=11, **({"d_model": 16, "num_heads": 2, "num_layers": 1, "max_len": 8}
                                             if name.startswith("transformer") else {"hidden_dim": 8, "embed_dim": 8})).eval()
    prompts = torch.randint(0, 11, (3, 4))
    st = m.stepper(cached=True)
    st.step(prompts)
    st.select(torch.tensor([2, 0]))
    nxt = torch.tensor([[5], [7]])
    both = st.step(nxt)
    for row, p in enumerate((2, 0)):
        alone = m.stepper(cached=True)
        alone.step(prompts[p : p + 1])
        torch.testing.assert_close(both[row : row + 1], alone.step(nxt[row : row + 1]), atol=1e-5, rtol=1e-5)


def test_lstm_forget_bias_sets_only_the_forget_gate():
    # PyTorch's gate order is (i, f, g, o): b_f = b_if + b_hf is the second quarter of each bias
    m = create_model("lstm_lm_small", vocab_size=11, embed_dim=6, hidden_dim=5, num_layers=2, forget_bias=1.0)
    ref = create_model("lstm_lm_small", vocab_size=11, embed_dim=6, hidden_dim=5, num_layers=2)
    for k in range(2):
        b_ih, b_hh = getattr(m.rnn, f"bias_ih_l{k}"), getattr(m.rnn, f"bias_hh_l{k}")
        assert torch.equal(b_ih[5:10], torch.ones(5)) and torch.equal(b_hh[5:10], torch.zeros(5))
        assert (b_ih[:5].abs() <= 0.1).all() and (b_ih[10:].abs() <= 0.1).all()  # the other gates keep uniform(-r, r)
    assert (ref.rnn.bias_ih_l0[5:10].abs() <= 0.1).all()
    with pytest.raises(ConfigError, match="forget gate"):
        create_model("gru_lm_small", vocab_size=11, forget_bias=1.0)


def test_transformer_lm_position_std_sets_the_learned_table_scale():
    torch.manual_seed(0)
    small = create_model("transformer_lm_char", vocab_size=11, d_model=64, num_layers=1, max_len=256, position="learned")
    big = create_model("transformer_lm_char", vocab_size=11, d_model=64, num_layers=1, max_len=256, position="learned",
                       position_std=1.0)
    assert abs(float(small.pos.weight.std()) - 0.02) < 0.003
    assert 0.8 < float(big.pos.weight.std()) < 0.95  # truncated at ±2: std ≈ 0.88
    with pytest.raises(ConfigError, match="position_std"):
        create_model("transformer_lm_char", vocab_size=11, position_std=0.0)

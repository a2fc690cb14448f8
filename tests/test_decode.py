"""Greedy and beam search with the KV cache, the GRU-attention model and mask-predict."""

import pytest
import torch
import torch.nn.functional as F

from attnlab.decode.mask_predict import mask_predict
from attnlab.decode.search import SearchConfig, beam_search, greedy_search, translate_ids
from attnlab.errors import ConfigError, ShapeError
from attnlab.models.seq2seq import GRUAttentionConfig, GRUAttentionSeq2Seq, build_seq2seq
from attnlab.nn import Transformer, TransformerConfig
from attnlab.nn.transformer import TransformerStepper

pytestmark = pytest.mark.usefixtures("one_thread")

PAD, BOS, EOS = 0, 1, 2
V = 14


def tiny_transformer(seed=0, **kw) -> Transformer:
    torch.manual_seed(seed)
    cfg = dict(d_model=32, num_heads=4, num_encoder_layers=2, num_decoder_layers=2, d_ff=64, dropout=0.0)
    cfg.update(kw)
    return Transformer(TransformerConfig(V, V, **cfg)).eval()


def tiny_gru(seed=0) -> GRUAttentionSeq2Seq:
    torch.manual_seed(seed)
    return GRUAttentionSeq2Seq(GRUAttentionConfig(V, V, embed_dim=16, hidden_dim=24, attn_dim=20, dropout=0.0)).eval()


def padded_sources(seed=1, n=6, max_len=9):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, max_len + 1, (n,), generator=g)
    src = torch.zeros(n, max_len, dtype=torch.long)
    for i, n_i in enumerate(lengths.tolist()):
        src[i, :n_i] = torch.randint(4, V, (n_i,), generator=g)
    return src


def alone(src_row):
    return src_row[src_row != PAD][None, :]


@pytest.mark.parametrize("norm_first", [False, True])
def test_cached_step_logits_equal_teacher_forced(norm_first):
    model = tiny_transformer(norm_first=norm_first)
    src = padded_sources()
    tgt = torch.randint(4, V, (src.shape[0], 7))
    tgt[:, 0] = BOS
    full = model(src, tgt).log_softmax(-1)
    for cached in (True, False):  # one token per step, with the cache and by re-running the prefix
        st = TransformerStepper(model, src, cached=cached)
        with torch.inference_mode():
            steps = torch.stack([st.step(tgt[:, t : t + 1]).log_softmax(-1) for t in range(tgt.shape[1])], 1)
        torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("beam", [1, 3])
def test_cached_equals_uncached_token_for_token(beam):
    model = tiny_transformer()
    src = padded_sources(n=8)
    kw = dict(eos=None, max_len_a=0, max_len_b=12, beam=beam)
    cached = translate_ids(model, src, SearchConfig(use_cache=True, **kw))
    uncached = translate_ids(model, src, SearchConfig(use_cache=False, **kw))
    assert cached == uncached
    assert all(len(h) == 12 for h in cached)
    # with the end token too (random weights stop at various lengths)
    kw["eos"] = EOS
    with_eos = [translate_ids(model, src, SearchConfig(use_cache=c, **kw)) for c in (True, False)]
    assert with_eos[0] == with_eos[1]


@pytest.mark.parametrize("make", [tiny_transformer, tiny_gru])
def test_beam_one_equals_greedy(make):
    for seed in range(3):
        model = make(seed)
        src = padded_sources(seed=seed + 5, n=8)
        assert beam_search(model, src, beam=1) == greedy_search(model, src)


@pytest.mark.parametrize("make", [tiny_transformer, tiny_gru])
@pytest.mark.parametrize("beam", [1, 4])
def test_padded_batch_translates_each_sentence_as_alone(make, beam):
    model = make(0)
    src = padded_sources(n=6)
    batch = translate_ids(model, src, beam=beam)
    for i in range(src.shape[0]):
        assert translate_ids(model, alone(src[i]), beam=beam)[0] == batch[i]


def test_length_limit_is_relative_to_source():
    model = tiny_transformer()
    src = padded_sources(n=5)
    out = greedy_search(model, src, eos=None, max_len_a=1.0, max_len_b=2)
    assert [len(o) for o in out] == [(int((s != PAD).sum()) + 2) for s in src]
    out = greedy_search(model, src, eos=None, max_len_a=1.0, max_len_b=2, max_len=4)
    assert all(len(o) == 4 for o in out)


def test_beam_search_scores_at_least_greedy():
    """Beam search maximises the (length-normalised) log-probability better than greedy."""
    model = tiny_transformer(3)
    src = padded_sources(seed=3, n=10)

    def logp(hyps):
        tot = []
        for i, h in enumerate(hyps):
            tgt = torch.tensor([[BOS] + h + [EOS]])
            lp = model(alone(src[i]), tgt[:, :-1]).log_softmax(-1)[0].gather(-1, tgt[0, 1:, None]).sum()
            tot.append(float(lp) / len(tgt[0, 1:]))
        return tot

    with torch.no_grad():
        g = logp(greedy_search(model, src, max_len_a=0, max_len_b=20))
        b = logp(beam_search(model, src, beam=5, max_len_a=0, max_len_b=20, length_penalty=1.0))
    ended = [i for i in range(len(g))]
    assert sum(b[i] for i in ended) >= sum(g[i] for i in ended) - 1e-4


def test_bad_arguments():
    model = tiny_transformer()
    with pytest.raises(ConfigError):
        beam_search(model, padded_sources(), beam=0)
    with pytest.raises(ShapeError):
        greedy_search(model, torch.tensor([4, 5, 6]))


def reversal_batch(n, g, lo=2, hi=7):
    lengths = torch.randint(lo, hi + 1, (n,), generator=g)
    src = torch.zeros(n, hi, dtype=torch.long)
    tgt = torch.zeros(n, hi + 2, dtype=torch.long)
    refs = []
    for i, n_i in enumerate(lengths.tolist()):
        s = torch.randint(4, V, (n_i,), generator=g)
        src[i, :n_i] = s
        tgt[i, 0], tgt[i, 1:n_i + 1], tgt[i, n_i + 1] = BOS, s.flip(0), EOS
        refs.append(s.flip(0).tolist())
    return src, tgt, refs


def test_transformer_learns_to_reverse_sequences():
    """Teacher forcing with shifted targets on a tiny model; greedy and beam then reverse
    unseen sequences exactly."""
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(V, V, d_model=64, num_heads=4, num_encoder_layers=2, num_decoder_layers=2,
                                          d_ff=128, dropout=0.0, share_embeddings=True))
    steps = 400
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 30) * max(0.02, 1 - s / steps))
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        src, tgt, _ = reversal_batch(64, g)
        logits = model(src, tgt[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, V), tgt[:, 1:].reshape(-1), ignore_index=PAD)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    src, _, refs = reversal_batch(100, torch.Generator().manual_seed(123))
    greedy = greedy_search(model, src)
    beam = beam_search(model, src, beam=3)
    assert sum(h == r for h, r in zip(greedy, refs)) == len(refs)
    assert sum(h == r for h, r in zip(beam, refs)) == len(refs)


def test_gru_attention_teacher_forcing_matches_steps():
    model = tiny_gru()
    src = padded_sources()
    tgt = torch.randint(4, V, (src.shape[0], 5))
    tgt[:, 0] = BOS
    full = model(src, tgt).log_softmax(-1)
    st = model.stepper(src)
    with torch.inference_mode():
        steps = torch.stack([st.step(tgt[:, t : t + 1]).log_softmax(-1) for t in range(tgt.shape[1])], 1)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)


def test_mask_predict_runs_and_is_batch_independent():
    torch.manual_seed(0)
    model = build_seq2seq("nat", V, V, d_model=32, num_heads=4, num_encoder_layers=1, num_decoder_layers=1, d_ff=64,
                          dropout=0.0, max_target_len=16).eval()
    src = padded_sources(n=5)
    target = src.clone()
    loss, stats = model.loss(src, target)
    assert loss.isfinite() and set(stats) == {"token_loss", "length_loss"}
    out = mask_predict(model, src, iterations=4, length_beam=2)
    assert len(out) == 5 and all(1 <= len(o) <= 16 for o in out)
    assert all(t not in (PAD, BOS, EOS) for o in out for t in o)
    for i in range(5):
        assert mask_predict(model, alone(src[i]), iterations=4, length_beam=2)[0] == out[i]


def test_mask_predict_learns_to_copy():
    """A few hundred steps teach the non-autoregressive model to copy short sequences."""
    torch.manual_seed(0)
    model = build_seq2seq("nat", V, V, d_model=64, num_heads=4, num_encoder_layers=2, num_decoder_layers=2, d_ff=128,
                          dropout=0.0, max_target_len=8, length_loss_weight=1.0)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.9, 0.98))
    g = torch.Generator().manual_seed(0)
    for _ in range(250):
        src, _, _ = reversal_batch(64, g, 2, 6)
        loss, _ = model.loss(src, src, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    src, _, refs = reversal_batch(50, torch.Generator().manual_seed(7), 2, 6)
    out = mask_predict(model, src, iterations=3, length_beam=2)
    copies = [s[s != PAD].tolist() for s in src]
    assert sum(o == c for o, c in zip(out, copies)) >= 45

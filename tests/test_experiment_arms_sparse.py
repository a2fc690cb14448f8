"""Arms that differ only in what is studied (issue 21, point 4) for topk-attention, vit-vs-cnn,
ar-vs-nat and rnn-forgetting: the window arm keeps as many keys per query as top-k, in the same
layers (self- and cross-attention); the ViT and the ResNet train the same number of optimizer
steps at every data size; the copy-task models have about the same number of parameters; the
mask-predict models get the data's vocabulary. And each experiment's rule reads its arms the
right way round: a planted effect in the paper's direction agrees, the same effect with the arm
labels swapped disagrees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from attnlab.experiments import get_experiment
from attnlab.experiments.rules import decide
from attnlab.models import create_model
from attnlab.models.ablations import nearest_key_mask
from attnlab.viz.record import AttentionRecorder

# --- topk-attention: the nearest-k window keeps top-k's number of keys, in the same layers ------------

SMALL = dict(src_vocab_size=50, tgt_vocab_size=50, d_model=32, num_heads=2, num_encoder_layers=2,
             num_decoder_layers=2, d_ff=64)


def key_counts(options: dict) -> dict[str, torch.Tensor]:
    """Attention module -> the number of keys each query attends to (non-zero weights), (B, H, Tq),
    on one teacher-forced batch with source and target padding."""
    torch.manual_seed(0)
    model = create_model("transformer_multi30k_sparse", **SMALL, **options).eval()
    src, tgt = torch.randint(4, 50, (3, 9)), torch.randint(4, 50, (3, 7))
    src[1, 6:], src[2, 2:] = model.cfg.pad_id, model.cfg.pad_id  # a short source: 2 keys only
    tgt[1, 5:] = model.cfg.pad_id
    with AttentionRecorder(model) as rec:
        model(src, tgt)
    return {name: (maps[0] > 0).sum(-1) for name, maps in rec.maps.items()}


def visible_keys() -> dict[str, torch.Tensor]:
    """The keys each query may see at all (padding; causal in the decoder's self-attention)."""
    return key_counts({})


@pytest.mark.parametrize("arm", ["local", "random"])
def test_sparse_arms_keep_top_k_key_count_in_every_layer(arm):
    """In every attention layer, self and cross, each query of the nearest-k (window) and random-k
    arms attends to exactly as many keys as top-k's: min(k, the keys it may see)."""
    from attnlab.experiments.topk_attention import ARMS, K

    top, other, visible = key_counts(ARMS["topk"]), key_counts(ARMS[arm]), visible_keys()
    assert set(top) == set(other) == set(visible)
    assert {n for n in top if "cross_attn" in n} and {n for n in top if "self_attn" in n}
    for name in top:
        assert torch.equal(top[name], visible[name].clamp(max=K)), name
        assert torch.equal(other[name], top[name]), name


def test_the_old_window_would_fail_the_check():
    """The window arm the experiment had (|i - j| <= 2, self-attention only) sees 1 to 5 keys and
    leaves cross-attention dense: the check above tells it apart from top-2."""
    top, old = key_counts({"topk": 2}), key_counts({"window": 2})
    assert any(not torch.equal(top[n], old[n]) for n in top if "self_attn" in n)
    assert all(not torch.equal(top[n], old[n]) for n in top if "cross_attn" in n)


def test_nearest_key_mask_keeps_the_nearest_allowed_keys():
    allowed = torch.ones(1, 1, 5, 5, dtype=torch.bool)
    m = nearest_key_mask(allowed, 2, torch.arange(5))[0, 0]
    assert m.sum(-1).tolist() == [2] * 5
    assert m[0].nonzero().flatten().tolist() == [0, 1]  # no key to the left: the right neighbour
    assert m[2].nonzero().flatten().tolist() == [1, 2]  # of two equally near keys, the earlier
    assert nearest_key_mask(allowed, 3, torch.arange(5))[0, 0, 2].nonzero().flatten().tolist() == [1, 2, 3]
    padded = allowed.clone()
    padded[..., 1:3] = False
    m = nearest_key_mask(padded, 2, torch.arange(5))[0, 0]
    assert m[1].nonzero().flatten().tolist() == [0, 3] and not (m & ~padded[0, 0]).any()
    assert nearest_key_mask(padded[..., :2], 2, torch.arange(5))[0, 0].sum(-1).tolist() == [1] * 5  # fewer allowed


def test_nearest_k_decodes_step_by_step_as_in_one_pass():
    """Cached decoding places each step's query where the uncached pass does (the diagonal in
    cross-attention), so greedy decoding sees the model it trained."""
    torch.manual_seed(0)
    model = create_model("transformer_multi30k_sparse", **SMALL, local_k=2).eval()
    src, tgt = torch.randint(4, 50, (2, 7)), torch.randint(4, 50, (2, 9))
    src[1, 5:] = model.cfg.pad_id
    with torch.no_grad():
        memory, mask = model.encode(src)
        whole = model.decode(tgt, memory, mask)
        cache = model.decoder.new_cache()
        steps = torch.cat([model.decode(tgt[:, i:i + 1], memory, mask, cache) for i in range(tgt.shape[1])], 1)
    torch.testing.assert_close(steps, whole, atol=1e-5, rtol=0)


# --- vit-vs-cnn: equal steps at every size ----------------------------------------------------------------

class _Budget:
    def __init__(self, budget: str) -> None:
        self.budget = budget

    def pick(self, quick, full):
        return quick if self.budget == "quick" else full


@pytest.mark.parametrize("budget", ["quick", "full"])
def test_vit_vs_cnn_sizes_make_the_same_steps(budget):
    """Each subset, as stratification rounds it, splits into whole batches: every arm makes the same
    number of optimizer steps (the image task drops a last partial batch)."""
    from attnlab.data import images as D
    from attnlab.experiments.vit_vs_cnn import epochs_for, settings

    s = settings(_Budget(budget))
    if s["dataset"] == "digits":
        labels = D.load_digits().train.labels
    else:  # CIFAR-10's training split: 5,000 images of each class
        labels = torch.arange(10).repeat_interleave(5000)
    for n in s["sizes"]:
        kept = len(labels) if n >= len(labels) else len(D.stratified_split(labels, n / len(labels), seed=0)[1])
        assert kept == n
        assert epochs_for(n, s["batch"], s["steps"]) * (kept // s["batch"]) == s["steps"]
    assert abs(1 - sum_params(s, "ViT") / sum_params(s, "ResNet")) < 0.02  # the same size, within 2%


def sum_params(s: dict, model: str) -> int:
    name, args = s["models"][model]
    return sum(p.numel() for p in create_model(name, **args).parameters())


def test_epochs_for_refuses_a_partial_epoch():
    from attnlab.errors import ConfigError
    from attnlab.experiments.vit_vs_cnn import epochs_for

    assert epochs_for(500, 100, 500) == 100
    with pytest.raises(ConfigError, match="whole epochs"):
        epochs_for(500, 128, 500)  # the old set-up: 501, 507 and 780 steps


# --- rnn-forgetting: parameters matched ---------------------------------------------------------------------

@pytest.mark.parametrize("budget", ["quick", "full"])
def test_copy_task_models_have_about_the_same_parameters(budget):
    """Every model, at every lag of the budget, within 10% of the LSTM's parameters (the old
    common width gave the Transformer 3-11 times the recurrent models')."""
    from attnlab.experiments.rnn_forgetting import KINDS, WIDTHS, CopyDataConfig, parameters

    lags, outputs = {"quick": ([2, 6], 10), "full": ([5, 10, 20, 50, 100], 20)}[budget]
    widths = WIDTHS[budget]
    for lag in lags:
        dc = CopyDataConfig(lag=lag, outputs=outputs)
        ref = parameters("lstm", widths["lstm"], dc)
        for kind in KINDS:
            assert abs(parameters(kind, widths[kind], dc) / ref - 1) < 0.10, (kind, lag)
    old, width = CopyDataConfig(lag=lags[-1], outputs=outputs), {"quick": 32, "full": 64}[budget]  # one common width
    assert parameters("transformer", width, old) > 2.5 * parameters("lstm", width, old)  # what the check catches


# --- ar-vs-nat: the mask-predict models get the data's vocabulary ----------------------------------------------

def test_mask_predict_arms_get_the_datas_vocabulary(tmp_path):
    from attnlab.experiments.ar_vs_nat import vocabulary
    from attnlab.runs import build_model
    from attnlab.tasks.translate import SPEC, TranslateDataConfig, load_data

    words = "ein hund läuft über die wiese a dog runs over the meadow eine katze schläft a cat sleeps".split()
    g = torch.Generator().manual_seed(0)
    files = {}
    for name in ("src", "tgt", "valid_src", "valid_tgt"):
        lines = [" ".join(words[i] for i in torch.randint(0, len(words), (6,), generator=g)) for _ in range(40)]
        files[name] = tmp_path / f"{name}.txt"
        files[name].write_text("\n".join(lines) + "\n")
    dc = TranslateDataConfig(**{k: str(v) for k, v in files.items()}, bpe_vocab_size=300)
    fields = load_data(dc, progress=False).model_fields
    model = build_model(SPEC, "mask_predict_multi30k", {"d_model": 16, "num_heads": 2, "d_ff": 32,
                                                        "num_encoder_layers": 1, "num_decoder_layers": 1,
                                                        **vocabulary(dc)}, fields)
    cfg = model.cfg.transformer
    assert (cfg.src_vocab_size, cfg.tgt_vocab_size, cfg.pad_id) == (fields["src_vocab_size"], fields["tgt_vocab_size"],
                                                                     fields["pad_id"])


def test_the_teacher_is_the_benchmark_recipe():
    """ar-vs-nat's teacher at full budget is BENCHMARKS.md's Multi30k De->En Transformer (37 greedy BLEU):
    its options, read from the command stored there, are the teacher's."""
    import re
    import shlex

    from attnlab.experiments.ar_vs_nat import setup, teacher_setup

    class Ctx(_Budget):
        def multi30k(self, train_pairs, valid_pairs):
            return {"src": "s", "tgt": "t", "valid_src": "vs", "valid_tgt": "vt"}

    ctx = Ctx("full")
    dc, _, _ = setup(ctx)
    tdc, train, model = teacher_setup(ctx, dc)
    page = (Path(__file__).resolve().parents[1] / "BENCHMARKS.md").read_text()
    cmd = json.loads(re.search(r'"de-en/transformer": ({.*?"command": "[^"]*")', page).group(1) + "}")["command"]
    words = shlex.split(cmd.split(" -- ", 1)[1])
    given = {w[2:].replace("-", "_"): v for w, v in zip(words, words[1:]) if w.startswith("--") and w != "--threads"}
    mine = {**vars(tdc), **train}
    for key in ("bpe_vocab_size", "max_tokens", "schedule", "warmup_steps", "lr", "min_lr", "epochs"):
        assert str(mine[key]) == given[key] or float(mine[key]) == float(given[key]), key
    assert model == {}  # the registry's transformer_multi30k as it is, which the benchmark's options also build:
    cfg = create_model("transformer_multi30k", src_vocab_size=100, tgt_vocab_size=100).cfg
    assert (cfg.d_model, cfg.num_heads, cfg.d_ff, cfg.num_encoder_layers, cfg.num_decoder_layers) == (
        int(given["d_model"]), int(given["num_heads"]), int(given["d_ff"]), int(given["num_layers"]),
        int(given["num_layers"]))


# --- the rules read their arms the right way round ---------------------------------------------------------

def _planted(name: str, good: float, bad: float) -> dict:
    """Per-seed results in the experiment's data layout, the paper's better arm at ``good`` (three
    seeds around it), its other arms at ``bad``."""
    seeds = [-0.1, 0.0, 0.1]
    hi, lo = [good + e for e in seeds], [bad + e for e in seeds]
    if name == "topk-attention":  # the cause arms (started from the trained full model) as the paper's arms
        bleu = {"topk": hi, "full": [good + 0.2 + e for e in seeds], "local": lo, "random": lo}
        return {"bleu": bleu, "cause_bleu": {a: bleu[a] for a in ("topk", "full", "local")}}
    if name == "vit-vs-cnn":  # the ResNet and CCT ahead on little data; the ViT's deficit smaller with more
        return {"smallest": {"ViT": lo, "ResNet": hi, "CCT": hi}, "gap_at": {"largest": [-1.0 + e for e in seeds],
                                                                  "smallest": [-(good - bad) + e for e in seeds]}}
    if name == "ar-vs-nat":  # the cause arms (3x the epochs) as the paper's students
        beam5 = [good + 0.3 + e for e in seeds]
        return {"bleu": {"mask_predict_distilled": hi, "beam5": beam5, "mask_predict_raw": lo},
                "cause_bleu": {"mask_predict_distilled": hi, "beam5": beam5}}
    raise KeyError(name)


def _swapped(name: str, data: dict) -> dict:
    """What a label swap in the experiment would store."""
    if name == "topk-attention":
        b, c = data["bleu"], data["cause_bleu"]
        return {"bleu": {**b, "topk": b["local"], "local": b["topk"], "random": b["topk"], "full": b["local"]},
                "cause_bleu": {**c, "topk": c["local"], "local": c["topk"]}}
    if name == "vit-vs-cnn":
        return {"smallest": {"ViT": data["smallest"]["ResNet"], "ResNet": data["smallest"]["ViT"],
                             "CCT": data["smallest"]["ViT"]},
                "gap_at": {"largest": data["gap_at"]["smallest"], "smallest": data["gap_at"]["largest"]}}
    b = data["bleu"]
    return {"bleu": {**b, "mask_predict_distilled": b["mask_predict_raw"], "mask_predict_raw": b["mask_predict_distilled"]},
            "cause_bleu": {**data["cause_bleu"], "mask_predict_distilled": b["mask_predict_raw"]}}


@pytest.mark.parametrize("name", ["topk-attention", "vit-vs-cnn", "ar-vs-nat"])
def test_a_planted_effect_agrees_and_its_label_swap_disagrees(name):
    rule = get_experiment(name).rule
    data = _planted(name, 30.0, 20.0)
    assert decide(rule, data).verdict == "agrees"
    swapped = decide(rule, _swapped(name, data))
    assert swapped.verdict == "disagrees" and all(o.note != "not measured in these results" for o in swapped.outcomes)

"""bench/compact_twin.py: the twin of the compact Transformers in the authors' layout
(SHI-Labs/Compact-Transformers) computes what attnlab's models compute, from the same weights,
and its benchmark writes its record.

Tolerances: logits within 1e-5 absolute (float32; the two differ only in the order of a few
operations: the fused attention kernel against the written-out softmax); gradients within
1e-5 absolute plus 1e-4 relative."""

import json
import sys

import pytest
import torch
import torch.nn.functional as F

from attnlab.models import create_model
from attnlab.nn.position import sinusoidal_table
from test_bench import bench

twin_bench = bench("compact_twin")

CASES = [
    ("cct_2_3x2_32", {}),  # two [conv, ReLU, max-pool], SeqPool, learned positions
    ("cvt_6_4_32", {}),  # the patch convolution with a bias, no ReLU, no pool
    ("vitlite_6_4_32", {}),  # the class token
    ("cct_2_3x2_32", {"pos_embed": "sine"}),  # the fixed table, no weight of attnlab's
    ("cct_2_3x2_32", {"pos_embed": "none"}),
]
NO_DROP = {"drop_rate": 0.0, "attn_drop_rate": 0.0, "drop_path_rate": 0.0}


def pair(name: str, **overrides):
    torch.manual_seed(0)
    model = create_model(name, **overrides)
    twin = twin_bench.build_twin(model.cfg)
    twin_bench.copy_weights(model, twin)
    return model, twin


@pytest.mark.parametrize("name, overrides", CASES)
def test_the_twin_gives_the_same_logits_in_eval_mode(name, overrides, one_thread):
    model, twin = pair(name, **overrides)
    for m in (model, twin):
        m.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ours, theirs = model(x), twin(x)
    assert ours.shape == theirs.shape == (3, 10)
    assert ours.abs().max() > 0.05  # not two zero heads
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name, overrides", CASES)
def test_one_training_step_gives_the_same_gradients(name, overrides, one_thread):
    model, twin = pair(name, **overrides, **NO_DROP)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 3, 7, 9])
    for m in (model, twin):
        F.cross_entropy(m(x), y).backward()
    theirs = dict(twin.named_parameters())
    for key, p in model.named_parameters():
        other = theirs[twin_bench.RENAMES.from_ours(key)]
        assert p.grad is not None and p.grad.abs().max() > 0, key
        torch.testing.assert_close(other.grad, p.grad, atol=1e-5, rtol=1e-4, msg=lambda m, k=key: f"{k}: {m}")
    trained = {twin_bench.RENAMES.from_ours(k) for k, _ in model.named_parameters()}
    assert {k for k, p in theirs.items() if p.requires_grad} == trained  # the twin trains nothing more


def test_the_twin_has_the_authors_module_names():
    _, twin = pair("cct_2_3x2_32")
    block = ["pre_norm.weight", "pre_norm.bias", "self_attn.qkv.weight", "self_attn.proj.weight", "self_attn.proj.bias",
             "linear1.weight", "linear1.bias", "norm1.weight", "norm1.bias", "linear2.weight", "linear2.bias"]
    assert set(twin.state_dict()) == {
        "tokenizer.conv_layers.0.0.weight", "tokenizer.conv_layers.1.0.weight", "classifier.positional_emb",
        *(f"classifier.blocks.{i}.{k}" for i in range(2) for k in block),
        "classifier.norm.weight", "classifier.norm.bias", "classifier.attention_pool.weight",
        "classifier.attention_pool.bias", "classifier.fc.weight", "classifier.fc.bias",
    }
    assert twin.classifier.blocks[1].drop_path.drop_prob == pytest.approx(0.1)  # stochastic depth up to 0.1


def test_the_sine_table_is_attnlabs_up_to_float32_angles():
    """The authors round each angle p / 10000^(2⌊i/2⌋/d) to float32 before sin/cos; attnlab takes
    sin/cos in float64. At 256 positions of 256 channels they differ by under 1e-5."""
    theirs, ours = twin_bench.sine_table(256, 256)[0], sinusoidal_table(256, 256)
    assert theirs[5, 0] == pytest.approx(torch.sin(torch.tensor(5.0)).item())
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


def test_weights_without_a_counterpart_are_refused():
    model, _ = pair("cct_2_3x2_32")
    other = twin_bench.build_twin(create_model("cct_2_3x2_32", pos_embed="none").cfg)
    with pytest.raises(KeyError, match="positional_emb"):
        twin_bench.copy_weights(model, other)


def test_the_speed_comparison_writes_its_record(tmp_path, monkeypatch, capsys, one_thread):
    argv = ["--model", "cct_4_3x2_32", "--rounds", "1", "--steps", "1", "--batch-size", "4", "--threads", "1",
            "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", ["bench/compact_twin.py", *argv])
    assert twin_bench.main(argv) == 0  # one_thread puts the thread count back
    res = json.loads((tmp_path / "bench-compact-twin-cct_4_3x2_32.json").read_text())
    assert res["model"] == "cct_4_3x2_32" and res["batch_size"] == 4 and res["threads"] == 1
    assert res["parameters"] == 482_123  # the authors' 0.482M
    assert set(res["rates"]) == set(res["images_per_s"]) == {"attnlab", "twin"}
    assert all(len(r) == 1 and r[0] > 0 for r in res["rates"].values())
    assert res["ratio"] == pytest.approx(res["images_per_s"]["attnlab"] / res["images_per_s"]["twin"])
    assert res["max_abs_logit_diff"] < 1e-5
    assert "torch threads" in res["machine"] and res["command"].startswith("python bench/compact_twin.py --model")
    row = capsys.readouterr().out.splitlines()
    assert any(line.startswith("| cct_4_3x2_32 | 4 | 1 |") for line in row)

"""int8 Linear layers (attnlab.export.int8, torchao): same interface, outputs close to fp32,
files a quarter of the fp32 size."""

from __future__ import annotations

import copy

import pytest
import torch

import attnlab
from attnlab.errors import ConfigError

pytest.importorskip("torchao", reason="int8 needs torchao: pip install 'attnlab[export]'")

from attnlab.export import compile_linears, export_model, is_int8, load_graph, quantize_int8  # noqa: E402


def rel_err(y, ref):
    return ((y - ref).norm() / ref.norm()).item()


def wide_vit():
    """A model dominated by Linear weights: 2 blocks 512 wide (6.3M Linear weights, 0.2M others)."""
    torch.manual_seed(0)
    return attnlab.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=10,
                                embed_dim=512, num_heads=8).eval()


# Measured on this random-weight model and input (relative L2 error of the logits): dynamic 2.9%,
# weight-only 1.6%. (Agreement on a trained model's test split: bench/deploy.py, BENCHMARKS.md.)
@pytest.mark.parametrize("mode,tol", [("dynamic", 0.05), ("weight", 0.03)])
def test_quantized_vit_close_to_fp32(mode, tol):
    m = wide_vit()
    x = torch.randn(8, 3, 32, 32)
    ref = m(x)
    q = quantize_int8(copy.deepcopy(m), mode)
    assert is_int8(q) and not is_int8(m)
    with torch.inference_mode():
        y = q(x)
        feats = q.forward_features(x)  # the rest of the interface still works
    assert y.shape == ref.shape and feats.shape == (8, 17, 512)
    assert rel_err(y, ref) < tol
    assert rel_err(y, ref) > 0  # the weights really changed


def test_quantized_lm_and_translation_model_run_in_inference_mode():
    """The LM's generation and the translation model's cached greedy search run on int8 weights
    (the search runs under torch.inference_mode) and stay close to fp32."""
    from attnlab.decode.search import greedy_search
    from attnlab.models.lm import TransformerLMConfig, build_lm
    from attnlab.models.seq2seq import transformer_multi30k

    torch.manual_seed(0)
    lm = build_lm(TransformerLMConfig(vocab_size=50, d_model=128, num_layers=2, num_heads=4, max_len=32)).eval()
    idx = torch.randint(0, 50, (2, 20))
    ref = lm(idx)
    q = quantize_int8(copy.deepcopy(lm))
    with torch.inference_mode():
        assert rel_err(q(idx), ref) < 0.03
        assert q.stepper().step(idx).shape == (2, 50)

    m = transformer_multi30k(src_vocab_size=60, tgt_vocab_size=60, num_encoder_layers=1, num_decoder_layers=1).eval()
    src = torch.randint(3, 60, (3, 6))
    q = quantize_int8(copy.deepcopy(m))
    assert not type(q.decoder.layers[0].cross_attn.qkv.weight).__module__.startswith("torchao")  # kept fp32 (sliced)
    assert type(q.decoder.layers[0].self_attn.qkv.weight).__module__.startswith("torchao")
    out = greedy_search(q, src, max_len_b=5)
    assert len(out) == 3 and all(len(o) <= 14 for o in out)


def test_compiled_int8_linear_equals_eager_at_every_shape():
    """compile_linears gives eager int8's values for every input shape, one row included: with
    torchao 0.18 and torch 2.14 the compiled layer alone is wrong (off by ~1e4) on a (1, 1, d)
    input, which is why compile_linears flattens inputs to rows first."""
    torch.manual_seed(0)
    eager = quantize_int8(torch.nn.Sequential(torch.nn.Linear(64, 96)))
    fast = compile_linears(copy.deepcopy(eager))
    assert is_int8(fast)
    with torch.inference_mode():
        for shape in [(1, 1, 64), (2, 1, 64), (1, 7, 64), (3, 5, 64), (4, 64), (1, 64), (64,)]:
            x = torch.randn(shape)
            y = fast(x)
            assert y.shape == (*shape[:-1], 96)
            torch.testing.assert_close(y, eager(x), rtol=1e-4, atol=1e-4)


def test_compiled_int8_decoding_gives_eager_int8_tokens():
    """Cached greedy decoding with compiled int8 Linear layers (batch 1: single-row steps; batch 3,
    whose rows leave as sentences end) emits the tokens of eager int8."""
    from attnlab.decode.search import greedy_search
    from attnlab.models.lm import TransformerLMConfig, build_lm
    from attnlab.models.seq2seq import transformer_multi30k

    torch.manual_seed(0)
    m = transformer_multi30k(src_vocab_size=40, tgt_vocab_size=40, d_model=64, num_heads=4, d_ff=128,
                             num_encoder_layers=1, num_decoder_layers=1).eval()
    eager = quantize_int8(copy.deepcopy(m))
    fast = compile_linears(quantize_int8(copy.deepcopy(m)))
    for b in (1, 3):
        src = torch.randint(3, 40, (b, 6))
        assert greedy_search(fast, src, max_len_b=8) == greedy_search(eager, src, max_len_b=8)

    lm = build_lm(TransformerLMConfig(vocab_size=40, d_model=64, num_layers=1, num_heads=4, max_len=32)).eval()
    eager = quantize_int8(copy.deepcopy(lm))
    fast = compile_linears(quantize_int8(copy.deepcopy(lm)))
    with torch.inference_mode():
        steps = eager.stepper(), fast.stepper()
        new = torch.randint(0, 40, (1, 5))
        for _ in range(6):  # the prompt, then one token (one row) per step
            want, got = (s.step(new) for s in steps)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
            new = want.argmax(-1, keepdim=True)


def test_bad_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="dynamic"):
        quantize_int8(torch.nn.Linear(2, 2), "int4")


@pytest.mark.parametrize("fmt", ["pt2", "onnx"])
def test_int8_export_is_small_and_close(tmp_path, fmt):
    if fmt == "onnx":
        for mod in ("onnx", "onnxscript", "onnxruntime"):
            pytest.importorskip(mod, reason=f"ONNX export needs {mod}: pip install 'attnlab[export]'")
    m = wide_vit()
    [f32] = export_model(m, tmp_path / f"fp32.{fmt}")
    [f8] = export_model(m, tmp_path / f"int8.{fmt}", int8=True)
    ratio = f8.stat().st_size / f32.stat().st_size
    assert ratio <= 0.30, f"int8 file is {ratio:.0%} of fp32"
    assert not is_int8(m)  # export quantized a copy
    x = torch.randn(3, 3, 32, 32)
    ref = m(x)
    (y,) = load_graph(f8)(x)
    assert 0 < rel_err(y, ref) < 0.05

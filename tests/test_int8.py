"""int8 Linear layers (attnlab.export.int8, torchao or fbgemm, chosen by measuring this CPU):
same interface, outputs close to fp32, files a quarter of the fp32 size, never slower than fp32."""

from __future__ import annotations

import copy

import pytest
import torch

import attnlab
from attnlab.errors import ConfigError

pytest.importorskip("torchao", reason="int8 needs torchao: pip install 'attnlab[export]'")

from attnlab.export import compile_linears, export_model, is_int8, load_graph, quantize_int8  # noqa: E402
from attnlab.export.int8 import choose_backend, int8_backend, linear_width  # noqa: E402


def rel_err(y, ref):
    return ((y - ref).norm() / ref.norm()).item()


def wide_vit():
    """A model dominated by Linear weights: 2 blocks 512 wide (6.3M Linear weights, 0.2M others)."""
    torch.manual_seed(0)
    return attnlab.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=10,
                                embed_dim=512, num_heads=8).eval()


# Measured on this random-weight model and input (relative L2 error of the logits): torchao
# dynamic 2.9%, weight-only 1.6%; fbgemm dynamic 3.6%. (Agreement on a trained model's test
# split: bench/deploy.py, BENCHMARKS.md.)
@pytest.mark.parametrize("mode,backend,tol", [("dynamic", "torchao", 0.05), ("weight", "torchao", 0.03),
                                              ("dynamic", "fbgemm", 0.05)])
def test_quantized_vit_close_to_fp32(mode, backend, tol):
    m = wide_vit()
    x = torch.randn(8, 3, 32, 32)
    ref = m(x)
    q = quantize_int8(copy.deepcopy(m), mode, backend=backend)
    assert is_int8(q) and not is_int8(m) and int8_backend(q) == backend
    with torch.inference_mode():
        y = q(x)
        feats = q.forward_features(x)  # the rest of the interface still works
    assert y.shape == ref.shape and feats.shape == (8, 17, 512)
    assert rel_err(y, ref) < tol
    assert rel_err(y, ref) > 0  # the weights really changed


@pytest.mark.parametrize("backend", ["torchao", "fbgemm"])
def test_quantized_lm_and_translation_model_run_in_inference_mode(backend):
    """The LM's generation and the translation model's cached greedy search run on int8 weights
    (the search runs under torch.inference_mode) and stay close to fp32."""
    from attnlab.decode.search import greedy_search
    from attnlab.models.lm import TransformerLMConfig, build_lm
    from attnlab.models.seq2seq import transformer_multi30k

    torch.manual_seed(0)
    lm = build_lm(TransformerLMConfig(vocab_size=50, d_model=128, num_layers=2, num_heads=4, max_len=32)).eval()
    idx = torch.randint(0, 50, (2, 20))
    ref = lm(idx)
    q = quantize_int8(copy.deepcopy(lm), backend=backend)
    with torch.inference_mode():
        assert rel_err(q(idx), ref) < 0.03
        assert q.stepper().step(idx).shape == (2, 50)

    m = transformer_multi30k(src_vocab_size=60, tgt_vocab_size=60, num_encoder_layers=1, num_decoder_layers=1).eval()
    src = torch.randint(3, 60, (3, 6))
    q = quantize_int8(copy.deepcopy(m), backend=backend)
    assert type(q.decoder.layers[0].cross_attn.qkv) is torch.nn.Linear  # kept fp32 (its weight is sliced)
    assert type(q.decoder.layers[0].cross_attn.qkv.weight) is torch.nn.Parameter
    assert int8_backend(q.decoder.layers[0].self_attn) == backend
    out = greedy_search(q, src, max_len_b=5)
    assert len(out) == 3 and all(len(o) <= 14 for o in out)


def test_compiled_int8_linear_equals_eager_at_every_shape():
    """compile_linears gives eager int8's values for every input shape, one row included: with
    torchao 0.18 and torch 2.14 the compiled layer alone is wrong (off by ~1e4) on a (1, 1, d)
    input, which is why compile_linears flattens inputs to rows first."""
    torch.manual_seed(0)
    eager = quantize_int8(torch.nn.Sequential(torch.nn.Linear(64, 96)), backend="torchao")
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
    eager = quantize_int8(copy.deepcopy(m), backend="torchao")
    fast = compile_linears(quantize_int8(copy.deepcopy(m), backend="torchao"))
    for b in (1, 3):
        src = torch.randint(3, 40, (b, 6))
        assert greedy_search(fast, src, max_len_b=8) == greedy_search(eager, src, max_len_b=8)

    lm = build_lm(TransformerLMConfig(vocab_size=40, d_model=64, num_layers=1, num_heads=4, max_len=32)).eval()
    eager = quantize_int8(copy.deepcopy(lm), backend="torchao")
    fast = compile_linears(quantize_int8(copy.deepcopy(lm), backend="torchao"))
    with torch.inference_mode():
        steps = eager.stepper(), fast.stepper()
        new = torch.randint(0, 40, (1, 5))
        for _ in range(6):  # the prompt, then one token (one row) per step
            want, got = (s.step(new) for s in steps)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
            new = want.argmax(-1, keepdim=True)


def test_bad_mode_or_backend_is_a_config_error(monkeypatch):
    with pytest.raises(ConfigError, match="dynamic"):
        quantize_int8(torch.nn.Linear(2, 2), "int4")
    with pytest.raises(ConfigError, match="fbgemm"):
        quantize_int8(torch.nn.Linear(2, 2), backend="int4")
    with pytest.raises(ConfigError, match="weight-only"):
        quantize_int8(torch.nn.Linear(2, 2), "weight", backend="fbgemm")
    monkeypatch.setenv("ATTNLAB_INT8_BACKEND", "onnx")
    with pytest.raises(ConfigError, match="ATTNLAB_INT8_BACKEND"):
        choose_backend()


@pytest.mark.parametrize("backend", ["torchao", "fbgemm"])
def test_detr_runs_in_int8(backend):
    """DETR's attentions slice their fused qkv weight (positions on Q and K, not V): those layers
    stay fp32 (``int8_keep_fp32``), the rest turn int8, and the boxes stay close to fp32's."""
    m = attnlab.create_model("detr_digits").eval()
    x = torch.rand(2, 1, 64, 64)
    ref = m(x)
    q = quantize_int8(copy.deepcopy(m), backend=backend)
    assert type(q.encoder[0].self_attn.qkv) is torch.nn.Linear and int8_backend(q.encoder[0].ff) == backend
    with torch.inference_mode():
        out = q(x)
    assert 0 < rel_err(out["boxes"], ref["boxes"]) < 0.01 and rel_err(out["logits"], ref["logits"]) < 0.05


def test_choice_takes_the_fastest_backend_and_keeps_fp32_when_none_is_faster(monkeypatch, tmp_path):
    """The choice follows the measured speeds (on an AVX2-only CPU torchao's int8 matmul is ~50x
    slower than fp32: fbgemm must win there), keeps fp32 when no int8 backend beats it, and is
    measured once per machine and thread count, then read from the cache."""
    calls = []

    def measure(speeds):
        def run(width):
            calls.append(width)
            return speeds
        return run

    monkeypatch.setenv("ATTNLAB_CACHE_DIR", str(tmp_path / "a"))
    avx2 = choose_backend(measure=measure({"torchao": 0.04, "fbgemm": 1.8}))
    assert (avx2.backend, avx2.how) == ("fbgemm", "measured") and "fbgemm 1.80x" in avx2.describe()
    again = choose_backend(measure=measure({"torchao": 9.0, "fbgemm": 0.1}))
    assert (again.backend, again.how, len(calls)) == ("fbgemm", "cached", 1)  # not measured again
    assert choose_backend(refresh=True, measure=measure({"torchao": 2.0, "fbgemm": 1.5})).backend == "torchao"
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(n + 1)  # another thread count is another measurement
        assert choose_backend(measure=measure({"torchao": 0.5, "fbgemm": 0.9})).backend is None
    finally:
        torch.set_num_threads(n)
    assert len(calls) == 3
    # another layer width is another measurement (small layers can lose to fp32 where large ones win)
    narrow = choose_backend((128, 128), measure=measure({"torchao": 0.2, "fbgemm": 0.8}))
    assert narrow.backend is None and calls[-1] == (128, 128) and "128x128" in narrow.describe()
    assert choose_backend().backend == "torchao"  # the default width keeps its (refreshed) measurement
    calls.pop()
    monkeypatch.setenv("ATTNLAB_CACHE_DIR", str(tmp_path / "b"))
    slow = choose_backend(measure=measure({"torchao": 0.04, "fbgemm": 0.7}))
    assert slow.backend is None and "kept fp32" in slow.describe()
    m = wide_vit()
    choose_backend(linear_width(m), measure=measure({"torchao": 0.04, "fbgemm": 0.7}))
    assert int8_backend(quantize_int8(copy.deepcopy(m))) is None  # cached "none": the model stays fp32
    monkeypatch.setenv("ATTNLAB_INT8_BACKEND", "torchao")
    forced = choose_backend(measure=measure({}))
    assert (forced.backend, forced.how, len(calls)) == ("torchao", "forced", 5)  # not measured


@pytest.mark.parametrize("name,make,make_input", [
    ("small ViT (384 wide)", lambda: attnlab.create_model("vit_small_patch16_224", img_size=64, depth=4),
     lambda: torch.randn(1, 3, 64, 64)),
    ("char LM (128 wide)", lambda: attnlab.create_model("transformer_lm_char", vocab_size=65),
     lambda: torch.randint(0, 65, (1, 32))),
])
def test_auto_int8_is_not_slower_than_fp32_on_this_cpu(name, make, make_input, one_thread):
    """On the CPU the tests run on, the int8 path ``--int8`` takes (measured for the model's layer
    width, not guessed) runs the model at least about as fast as fp32. Before the choice, an
    AVX2-only CPU ran torchao's slow int8 matmul (a ViT-B/16 23x slower than fp32), and a
    choice measured only at ViT-B's width ran a 128-wide char LM at 0.8x fp32 (BENCHMARKS.md).
    The margin, 1.3x, is for timing noise on a shared machine; the speeds: bench/deploy.py."""
    import time

    m = make().eval()
    choice = choose_backend(linear_width(m), refresh=True)
    q = quantize_int8(copy.deepcopy(m))
    assert int8_backend(q) == choice.backend
    x = make_input()
    best = {"fp32": float("inf"), "int8": float("inf")}
    with torch.inference_mode():
        for model in (m, q):
            model(x)  # warm-up
        for _ in range(9):  # interleaved, best of 9
            for k, model in (("fp32", m), ("int8", q)):
                t0 = time.perf_counter()
                model(x)
                best[k] = min(best[k], time.perf_counter() - t0)
    assert best["int8"] <= 1.3 * best["fp32"], (f"{name}: {choice.describe()}: int8 {best['int8']:.4f} s "
                                                f"vs fp32 {best['fp32']:.4f} s")


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


def test_torchao_import_says_nothing():
    """torchao logs a warning for each prebuilt kernel library it cannot load (e.g. its CUDA-only
    ``_C_mxfp8`` built for another Python) and a pytree deprecation; `--int8` shows none of them.
    The failure is provoked here (``torch.ops.load_library`` raising), in a fresh process with
    logging configured as an application would."""
    import subprocess
    import sys

    code = ("import logging, torch; logging.basicConfig()\n"
            "def refuse(path): raise OSError('undefined symbol: _ZN3c10')\n"
            "torch.ops.load_library = refuse\n"
            "from attnlab.export.int8 import _torchao_quantization; _torchao_quantization()\n"
            "import torchao; assert torchao.__version__\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""

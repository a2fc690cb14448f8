"""int8 weights for the Linear layers, for inference on a CPU, with the backend chosen by the
processor it runs on.

Two backends, both per-output-channel symmetric int8 weights and int8 activations quantized at
run time:

- ``"torchao"`` (``pip install 'attnlab[export]'``; ``Int8DynamicActivationInt8WeightConfig``):
  activations per token, the matmul in ``torch._int_mm``. Fast where the processor has int8
  dot-product instructions (VNNI, AMX), and under ``torch.compile``, which fuses the activation
  quantization. **Without VNNI** (e.g. AMD Zen 3, most AVX2-only CPUs) ``torch._int_mm`` takes a
  slow path: about 50x an fp32 matmul, a ViT-B/16 23x slower than fp32.
- ``"fbgemm"``: PyTorch's own dynamic int8 Linear (``torch.ao.quantization.quantize_dynamic``,
  the fbgemm/x86 kernels; per-tensor activations): fast with AVX2 alone.

``backend="auto"`` (the default, and what every ``--int8`` command runs) measures each
backend's Linear layer against fp32 on this machine at the model's own layer width (the most
common in/out size of its Linear layers; one row, as in decoding, and 128 rows, as in a batch or
an image; a few calls, about a second) and caches the result per processor, thread count,
library version and width (``$ATTNLAB_CACHE_DIR``, default ``~/.cache/attnlab``). It picks the
fastest; if no int8 backend beats fp32 it keeps fp32 (int8 is for speed here, and never makes a
model slower: at 128 wide, per-call costs outweigh the arithmetic int8 saves).
``ATTNLAB_INT8_BACKEND=torchao|fbgemm`` forces one. :func:`int8_backend` says which one a
model holds.

The weight-only mode (``mode="weight"``: ``Int8WeightOnlyConfig``, weights dequantized on the
fly, activations float) is torchao's only: closer to fp32, for size rather than speed.

:func:`compile_linears` then compiles each Linear layer on its own (``torch.compile``), which
fuses torchao's activation quantization into the int8 matmul: the fast path for decoding loops,
which cannot be compiled whole because their cache grows at every step.

Only ``nn.Linear`` layers change (convolutions, embeddings and norms stay float), so a model
dominated by Linear weights shrinks to about a quarter of its fp32 size. The returned model
has the same call signature and methods as before. Cross-attention's fused ``qkv`` stays fp32
(``KEEP_FP32``; a model adds its own in ``int8_keep_fp32``): attention slices its weight into
the query and key/value parts, and slicing a torchao int8 weight fails under
``torch.inference_mode`` (torchao 0.18: "Cannot set version_counter for inference tensor"),
while an fbgemm layer has no weight tensor to slice.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from attnlab.errors import ConfigError, UnsupportedError

INT8_MODES = ("dynamic", "weight")
INT8_BACKENDS = ("torchao", "fbgemm")
BACKEND_ENV = "ATTNLAB_INT8_BACKEND"
PROBE_ROWS = (1, 128)  # rows a Linear layer is measured at: one decoding step; a batch or an image's tokens
DEFAULT_WIDTH = (768, 768)  # (in, out) measured when no model is given (ViT-B's attention projections)


def _torchao_quantization():
    """torchao.quantization, imported without the chatter torchao's import logs (deprecations,
    and a warning for each prebuilt kernel library it cannot load, e.g. ``_C_mxfp8``, a CUDA
    kernel of no use on a CPU)."""
    logs = [logging.getLogger(n) for n in ("torch.utils._pytree", "torchao")]
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.ERROR)
    try:
        from torchao import quantization
    except ImportError as e:
        raise UnsupportedError("int8 quantization needs torchao: pip install 'attnlab[export]'") from e
    finally:
        for log, level in zip(logs, levels):
            log.setLevel(level)
    return quantization


KEEP_FP32 = ("cross_attn.qkv",)  # Linear layers whose weight attention slices (see above)


def _quantizable(model: nn.Module):
    """``(module, name) -> bool``: the Linear layers that turn int8, all but those whose names end
    in ``KEEP_FP32`` or in the model's own ``int8_keep_fp32`` (a model that slices more weights,
    such as DETR, declares them)."""
    keep = KEEP_FP32 + tuple(getattr(model, "int8_keep_fp32", ()))
    return lambda m, name: isinstance(m, nn.Linear) and not name.endswith(keep)


def _torchao_quantize(model: nn.Module, mode: str) -> None:
    q = _torchao_quantization()
    config = q.Int8DynamicActivationInt8WeightConfig() if mode == "dynamic" else q.Int8WeightOnlyConfig()
    q.quantize_(model, config, filter_fn=_quantizable(model))


def _fbgemm_quantize(model: nn.Module) -> None:
    from torch.ao import quantization as tq

    keep = _quantizable(model)
    spec = {name: tq.per_channel_dynamic_qconfig for name, m in model.named_modules() if keep(m, name)}
    with warnings.catch_warnings():  # torch.ao.quantization's deprecation notices
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*quantize_per_(tensor|channel).*deprecated", category=UserWarning)
        tq.quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True)


def quantize_int8(model: nn.Module, mode: str = "dynamic", backend: str = "auto") -> nn.Module:
    """Quantize every ``nn.Linear`` of ``model`` to int8 weights, in place; returns ``model``
    (in eval mode, for inference only). ``mode``: ``"dynamic"`` (int8 activations too) or
    ``"weight"`` (weight-only, torchao). ``backend``: ``"auto"`` (the fastest on this
    processor, measured once: :func:`choose_backend`; fp32 is kept when no int8 backend is
    faster), ``"torchao"`` or ``"fbgemm"``. :func:`int8_backend` tells which one the model
    holds. Copy the model first to keep the fp32 one."""
    if mode not in INT8_MODES:
        raise ConfigError(f"int8 mode {mode!r} is not allowed; choose one of {', '.join(map(repr, INT8_MODES))}")
    if backend not in ("auto", *INT8_BACKENDS):
        raise ConfigError(f"int8 backend {backend!r} is not known; choose auto, {', '.join(INT8_BACKENDS)}")
    if mode == "weight":
        if backend == "fbgemm":
            raise ConfigError("weight-only int8 is torchao's; use backend 'torchao' or 'auto'")
        backend = "torchao"
    elif backend == "auto":
        backend = choose_backend(linear_width(model)).backend
    model.eval().requires_grad_(False)
    if backend == "torchao":
        _torchao_quantize(model, mode)
    elif backend == "fbgemm":
        _fbgemm_quantize(model)
    return model


def int8_backend(model: nn.Module) -> str | None:
    """The int8 backend of ``model``'s Linear layers (``"torchao"`` or ``"fbgemm"``), None if fp32."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    for m in model.modules():
        if isinstance(m, DynamicQuantizedLinear):
            return "fbgemm"
        if isinstance(m, nn.Linear) and type(m.weight).__module__.startswith("torchao"):
            return "torchao"
    return None


def is_int8(model: nn.Module) -> bool:
    """Whether any Linear layer of ``model`` holds int8 weights (from :func:`quantize_int8`)."""
    return int8_backend(model) is not None


def compile_linears(model: nn.Module) -> nn.Module:
    """``torch.compile`` (inductor, dynamic shapes) every ``nn.Linear`` of ``model`` on its own, in
    place; returns ``model``. Meant for int8 layers from :func:`quantize_int8`, whose per-token
    activation quantization and int8 matmul fuse into one kernel (fp32 layers gain little).

    Only the Linear layers are compiled, not the model: a Linear sees the same input width at every
    decoding step, while a whole decoder with a growing key/value cache would change shape at every
    step. Each layer compiles on its first call (seconds; inductor caches the code on disk) and
    once more for a single row, which dynamo specializes. Inputs are flattened to 2-D
    ``(rows, in_features)`` before the compiled call: with torchao 0.18 and torch 2.14, a compiled
    int8 Linear gives wrong values for a 3-D input holding one row, e.g. ``(1, 1, d)`` in batch-1
    decoding (tests/test_int8.py guards this). Compile last: a copy of the model made afterwards
    would still call the original's layers. Two harmless messages of the first compilation are
    silenced: torchao's hint that its int8 tensors cannot be cached, and a CUDA build's "No CUDA
    runtime is found"."""
    import torch._dynamo

    warnings.filterwarnings("ignore", message=r".*does not implement _stable_hash_for_caching", category=UserWarning)
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    # every layer is a separate compiled graph of the same code (nn.Linear.forward), up to three each
    limit = 3 * len(linears)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, limit)
    torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit, limit)
    for m in linears:
        m.forward = _rows_first(torch.compile(m.forward, dynamic=True), m.in_features)
    return model


def _rows_first(linear, in_features: int):
    """``linear`` applied to ``x`` (..., in_features) as a 2-D ``(rows, in_features)`` matrix."""
    def forward(x: torch.Tensor) -> torch.Tensor:
        return linear(x.reshape(-1, in_features)).reshape(*x.shape[:-1], -1)
    return forward


# --- the backend for this processor ---------------------------------------------------------------

@dataclass
class BackendChoice:
    """The int8 backend picked for this machine and layer width (None: keep fp32, no int8 backend
    is faster), the measured speed of each backend's Linear layer against fp32 (geometric mean
    over ``PROBE_ROWS``; 2.0 = twice as fast), the processor, and how it was decided."""

    backend: str | None
    speedup: dict = field(default_factory=dict)
    cpu: dict = field(default_factory=dict)
    how: str = "measured"  # "measured", "cached" or "forced" (ATTNLAB_INT8_BACKEND)
    width: tuple = DEFAULT_WIDTH  # the (in, out) features measured

    def describe(self) -> str:
        """One line: ``int8 backend fbgemm (measured on this CPU: fbgemm 2.41x, torchao 0.04x fp32; AMD EPYC ...)``."""
        from attnlab.cpu import describe_cpu

        if self.how == "forced":
            return f"int8 backend {self.backend} (set by {BACKEND_ENV})"
        speeds = ", ".join(f"{k} {v:.2f}x" for k, v in sorted(self.speedup.items(), key=lambda kv: -kv[1]))
        what = f"int8 backend {self.backend}" if self.backend else "int8 kept fp32: no int8 backend is faster here"
        return (f"{what} ({self.how} on this CPU for {self.width[0]}x{self.width[1]} Linear layers: {speeds} "
                f"fp32's speed; {describe_cpu(self.cpu)})")


def cache_dir() -> Path:
    """Where per-machine measurements are kept: ``$ATTNLAB_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/attnlab``, else ``~/.cache/attnlab``."""
    if os.environ.get("ATTNLAB_CACHE_DIR"):
        return Path(os.environ["ATTNLAB_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "attnlab"


def linear_width(model: nn.Module) -> tuple[int, int]:
    """The most common (in_features, out_features) of ``model``'s Linear layers (DEFAULT_WIDTH if
    it has none): the width the int8 backends are measured at for it."""
    from collections import Counter

    sizes = Counter((m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear))
    return sizes.most_common(1)[0][0] if sizes else DEFAULT_WIDTH


def _machine_key(cpu: dict, width: tuple[int, int]) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        torchao = version("torchao")
    except PackageNotFoundError:
        torchao = "none"
    return (f"{cpu['model']}|{cpu['capability']}|{','.join(cpu['flags'])}|{cpu['torch_threads']} threads|"
            f"torch {torch.__version__}|torchao {torchao}|{width[0]}x{width[1]}")


def choose_backend(width: tuple[int, int] = DEFAULT_WIDTH, refresh: bool = False, measure=None) -> BackendChoice:
    """The fastest int8 backend for this processor, thread count and Linear ``width`` (in, out):
    ``$ATTNLAB_INT8_BACKEND`` if set; else the cached measurement; else measured now
    (``measure(width)``: backend -> speed against fp32, default :func:`measure_backends`) and
    cached. ``refresh`` measures again. None when no int8 backend is faster than fp32."""
    from attnlab.cpu import cpu_info

    cpu = cpu_info()
    forced = os.environ.get(BACKEND_ENV)
    if forced:
        if forced not in INT8_BACKENDS:
            raise ConfigError(f"{BACKEND_ENV}={forced!r} is not an int8 backend; choose {' or '.join(INT8_BACKENDS)}")
        return BackendChoice(forced, cpu=cpu, how="forced", width=tuple(width))
    key, path = _machine_key(cpu, width), cache_dir() / "int8-backends.json"
    cache = _read_cache(path)
    if not refresh and isinstance(cache.get(key), dict) and isinstance(cache[key].get("speedup"), dict):
        speedup, how = cache[key]["speedup"], "cached"
    else:
        speedup, how = (measure or measure_backends)(width), "measured"
        cache[key] = {"speedup": speedup, "measured_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        _write_cache(path, cache)
    best = max(speedup, key=speedup.get, default=None)
    return BackendChoice(best if best is not None and speedup[best] > 1.0 else None, speedup, cpu, how, tuple(width))


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, cache: dict) -> None:
    """Best effort: a machine whose cache folder cannot be written measures again next time."""
    from attnlab.io import atomic_write_json

    try:
        atomic_write_json(path, cache)
    except OSError:
        pass


def measure_backends(width: tuple[int, int] = DEFAULT_WIDTH, rows=PROBE_ROWS, max_seconds: float = 0.3) -> dict[str, float]:
    """Each available int8 backend's Linear layer of ``width`` (in, out) against fp32 on this
    machine: the geometric mean over ``rows`` of fp32 time / int8 time, each the best of a few
    interleaved calls (fewer when a call is slow: a slow path shows in one call)."""
    backends = [b for b in INT8_BACKENDS if b != "torchao" or _has_torchao()]
    logs = {b: 0.0 for b in backends}
    torch.manual_seed(0)
    fp32 = nn.Sequential(nn.Linear(*width)).eval()
    layers = {"fp32": fp32, **{b: quantize_int8(copy.deepcopy(fp32), backend=b) for b in backends}}
    with torch.inference_mode():
        for n in rows:
            best = _best_times(layers, torch.randn(n, width[0]), max_seconds)
            for b in backends:
                logs[b] += torch.log(torch.tensor(best["fp32"] / best[b])).item() / len(rows)
    return {b: round(float(torch.tensor(v).exp()), 3) for b, v in logs.items()}


def _best_times(layers: dict, x: torch.Tensor, max_seconds: float, calls: int = 7) -> dict[str, float]:
    """The fastest of up to ``calls`` calls of each layer on ``x``, the layers interleaved; a layer
    stops being called once its calls have taken ``max_seconds``."""
    for m in layers.values():
        m(x)  # warm-up
    best = {k: float("inf") for k in layers}
    spent = dict.fromkeys(layers, 0.0)
    for _ in range(calls):
        for k, m in layers.items():
            if spent[k] >= max_seconds:
                continue
            t0 = time.perf_counter()
            m(x)
            dt = time.perf_counter() - t0
            best[k], spent[k] = min(best[k], dt), spent[k] + dt
    return best


def _has_torchao() -> bool:
    try:
        _torchao_quantization()
    except UnsupportedError:
        return False
    return True

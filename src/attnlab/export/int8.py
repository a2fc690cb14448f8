"""int8 weights for the Linear layers, for inference on a CPU.

The maintained library for this is torchao (``pip install 'attnlab[export]'``); it runs on
this project's CPU with torch 2.14, so ``torch.ao.quantization.quantize_dynamic`` (deprecated)
is not used. Two modes, both per-output-channel symmetric int8 weights:

- ``"dynamic"``: activations are quantized to int8 per token at run time and the matmul runs
  in int8 (torchao ``Int8DynamicActivationInt8WeightConfig``). The fast mode on a CPU,
  especially under ``torch.compile``, which fuses the activation quantization.
- ``"weight"``: weight-only int8, dequantized on the fly, activations stay float
  (``Int8WeightOnlyConfig``). Closer to fp32; in eager mode not faster than fp32 on a CPU.

:func:`compile_linears` then compiles each Linear layer on its own (``torch.compile``), which
fuses the activation quantization into the int8 matmul: the fast path for decoding loops, which
cannot be compiled whole because their cache grows at every step.

Only ``nn.Linear`` layers change (convolutions, embeddings and norms stay float), so a model
dominated by Linear weights shrinks to about a quarter of its fp32 size. The returned model
has the same call signature and methods as before. Cross-attention's fused ``qkv`` stays fp32:
attention slices its weight into the query and key/value parts, and slicing a torchao int8
weight fails under ``torch.inference_mode`` (torchao 0.18: "Cannot set version_counter for
inference tensor").
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from attnlab.errors import ConfigError, UnsupportedError

INT8_MODES = ("dynamic", "weight")


def _torchao_quantization():
    """torchao.quantization, imported without the deprecation chatter torchao's import logs."""
    log = logging.getLogger("torch.utils._pytree")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        from torchao import quantization
    except ImportError as e:
        raise UnsupportedError("int8 quantization needs torchao: pip install 'attnlab[export]'") from e
    finally:
        log.setLevel(level)
    return quantization


def quantize_int8(model: nn.Module, mode: str = "dynamic") -> nn.Module:
    """Quantize every ``nn.Linear`` of ``model`` to int8 weights, in place; returns ``model``
    (in eval mode, for inference only). ``mode``: ``"dynamic"`` (int8 activations too) or
    ``"weight"`` (weight-only). Copy the model first to keep the fp32 one."""
    if mode not in INT8_MODES:
        raise ConfigError(f"int8 mode {mode!r} is not allowed; choose one of {', '.join(map(repr, INT8_MODES))}")
    q = _torchao_quantization()
    config = q.Int8DynamicActivationInt8WeightConfig() if mode == "dynamic" else q.Int8WeightOnlyConfig()
    model.eval().requires_grad_(False)
    q.quantize_(model, config, filter_fn=lambda m, name: isinstance(m, nn.Linear) and not name.endswith("cross_attn.qkv"))
    return model


def is_int8(model: nn.Module) -> bool:
    """Whether any Linear layer of ``model`` holds int8 weights (from :func:`quantize_int8`)."""
    return any(isinstance(m, nn.Linear) and type(m.weight).__module__.startswith("torchao") for m in model.modules())


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
    import warnings

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

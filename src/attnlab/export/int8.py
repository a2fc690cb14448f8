"""int8 weights for the Linear layers, for inference on a CPU.

The maintained library for this is torchao (``pip install 'attnlab[export]'``); it runs on
this project's CPU with torch 2.14, so ``torch.ao.quantization.quantize_dynamic`` (deprecated)
is not used. Two modes, both per-output-channel symmetric int8 weights:

- ``"dynamic"``: activations are quantized to int8 per token at run time and the matmul runs
  in int8 (torchao ``Int8DynamicActivationInt8WeightConfig``). The fast mode on a CPU,
  especially under ``torch.compile``, which fuses the activation quantization.
- ``"weight"``: weight-only int8, dequantized on the fly, activations stay float
  (``Int8WeightOnlyConfig``). Closer to fp32; in eager mode not faster than fp32 on a CPU.

Only ``nn.Linear`` layers change (convolutions, embeddings and norms stay float), so a model
dominated by Linear weights shrinks to about a quarter of its fp32 size. The returned model
has the same call signature and methods as before. Cross-attention's fused ``qkv`` stays fp32:
attention slices its weight into the query and key/value parts, and slicing a torchao int8
weight fails under ``torch.inference_mode`` (torchao 0.18: "Cannot set version_counter for
inference tensor").
"""

from __future__ import annotations

import logging

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

"""The processor a figure was measured on: model name, the ISA level PyTorch dispatches to, and
the int8 instructions present. Speed on a CPU depends on all three (an int8 matmul without VNNI
can be 50x slower than with it), so every benchmark and every int8 choice records them."""

from __future__ import annotations

import functools
import os
import platform

import torch

# /proc/cpuinfo flags that decide int8 and bfloat16 speed
INT8_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """(model name, flags) from /proc/cpuinfo; the platform's processor string and no flags elsewhere."""
    model, flags = platform.processor() or platform.machine(), frozenset()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    model = value.strip()
                elif key == "flags":
                    flags = frozenset(value.split())
                if key == "" and flags:  # the first processor is enough
                    break
    except OSError:
        pass
    return model, flags


def cpu_info() -> dict:
    """``{"model", "capability", "vnni", "amx", "flags", "cores", "torch_threads"}``: the
    processor model, ``torch.backends.cpu.get_cpu_capability()`` (e.g. ``AVX2``, ``AVX512``),
    whether VNNI / AMX int8 instructions are present (None: unknown on this platform), the
    int8-relevant flags present, the logical cores and PyTorch's thread count."""
    model, flags = _cpuinfo()
    known = bool(flags)
    return {
        "model": model,
        "capability": torch.backends.cpu.get_cpu_capability(),
        "vnni": bool(flags & {"avx512_vnni", "avx_vnni"}) if known else None,
        "amx": "amx_int8" in flags if known else None,
        "flags": [f for f in INT8_FLAGS if f in flags],
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def describe_cpu(info: dict | None = None) -> str:
    """One line for a report: ``AMD EPYC 9R14, torch AVX512, VNNI yes, AMX no, 2 cores``."""
    info = info or cpu_info()

    def yes(v):
        return "?" if v is None else ("yes" if v else "no")

    return (f"{info['model']}, torch {info['capability']}, VNNI {yes(info['vnni'])}, AMX {yes(info['amx'])}, "
            f"{info['cores']} cores")

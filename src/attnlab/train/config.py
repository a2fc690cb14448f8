"""Configuration dataclasses and their command-line options.

Every field of a config dataclass becomes the option ``--field-name`` (underscores to dashes)
with the help text, type and choices from the field's metadata, so the dataclass and the CLI
cannot drift apart: :func:`add_arguments` builds the options, :func:`from_args` builds the
config back from the parsed arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from attnlab.errors import ConfigError

# --- option types: each gives one clear message for a bad value --------------------------------


def _num(kind, s: str):
    try:
        v = kind(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not {'a whole number' if kind is int else 'a number'}") from None
    if isinstance(v, float) and not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{s!r} is not a finite number")
    return v


def positive_int(s: str) -> int:
    v = _num(int, s)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{s} must be a positive whole number")
    return v


def nonneg_int(s: str) -> int:
    v = _num(int, s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"{s} must be zero or a positive whole number")
    return v


def positive_float(s: str) -> float:
    v = _num(float, s)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{s} must be a positive number")
    return v


def nonneg_float(s: str) -> float:
    v = _num(float, s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"{s} must be zero or positive")
    return v


def unit_float(s: str) -> float:
    """A number in [0, 1)."""
    v = _num(float, s)
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"{s} must be in [0, 1)")
    return v


def any_int(s: str) -> int:
    return _num(int, s)


def opt(default, help: str, type=None, choices=None, metavar=None, nargs=None) -> Any:
    """A dataclass field carrying its command-line description."""
    meta = {"help": help, "type": type, "choices": choices, "metavar": metavar, "nargs": nargs}
    if isinstance(default, (list, tuple, dict)):
        return field(default_factory=lambda: type_copy(default), metadata=meta)
    return field(default=default, metadata=meta)


def type_copy(v):
    return type(v)(v)


@dataclass
class TrainConfig:
    """How to train, whatever the task. Each field is the CLI option of the same name."""

    epochs: int = opt(10, "passes over the training set", positive_int, metavar="N")
    batch_size: int = opt(128, "samples per optimizer step, summed over processes and accumulation steps "
                               "(the global batch: the same number gives the same run on 1 or N processes)",
                          positive_int, metavar="N")
    accum_steps: int = opt(1, "split each batch into this many micro-batches whose gradients are summed "
                              "(same result, less memory)", positive_int, metavar="N")
    lr: float = opt(1e-3, "peak learning rate, reached at the end of the warm-up", positive_float, metavar="X")
    min_lr: float = opt(1e-5, "learning rate at the end of the cosine or linear decay", nonneg_float, metavar="X")
    schedule: str = opt("cosine", "learning-rate schedule after the linear warm-up: cosine (ViT), linear, constant, "
                                  "or inverse-sqrt (the Transformer paper's)",
                        choices=("cosine", "linear", "constant", "inverse-sqrt"))
    warmup_epochs: float = opt(1.0, "linear warm-up length in epochs", nonneg_float, metavar="X")
    warmup_steps: int | None = opt(None, "linear warm-up length in optimizer steps (overrides --warmup-epochs)",
                                   nonneg_int, metavar="N")
    optimizer: str = opt("adamw", "adamw, or sgd (plain SGD with optional --momentum: the classic recipe of "
                                  "recurrent language models, with a large --lr such as 20)", choices=("adamw", "sgd"))
    momentum: float = opt(0.0, "SGD momentum", unit_float, metavar="X")
    weight_decay: float = opt(0.05, "AdamW decoupled weight decay, applied to weight matrices only "
                                    "(not to biases, norms or position/class embeddings); with --optimizer sgd it is "
                                    "an L2 penalty: pass 0 or a much smaller value", nonneg_float, metavar="X")
    betas: tuple[float, float] = opt((0.9, 0.999), "AdamW's beta1 and beta2", unit_float, metavar="B", nargs=2)
    eps: float = opt(1e-8, "AdamW's epsilon", positive_float, metavar="X")
    label_smoothing: float = opt(0.0, "label smoothing of the cross-entropy target (0 = off)", unit_float, metavar="X")
    clip_grad: float = opt(1.0, "clip the global gradient norm to this value (0 = off)", nonneg_float, metavar="X")
    ema_decay: float = opt(0.0, "keep an exponential moving average of the weights with this decay and evaluate it "
                                "(e.g. 0.999; 0 = off)", unit_float, metavar="X")
    precision: str = opt("fp32", "fp32, or bf16 autocast (slow on most CPUs; for GPUs)", choices=("fp32", "bf16"))
    max_minutes: float = opt(0.0, "stop after this many minutes of wall-clock time (0 = no limit), counting the whole "
                                  "command: the backbone pretraining of 'train detect' included. The current epoch is "
                                  "cut short, evaluated and saved; the schedule is still planned for --epochs",
                             nonneg_float, metavar="X")
    eval_every: int = opt(1, "evaluate every N epochs (and always after the last)", positive_int, metavar="N")
    save_every: int = opt(0, "also save the last checkpoint every N optimizer steps within an epoch (0 = at epoch ends only)",
                          nonneg_int, metavar="N")
    log_every: int = opt(10, "record the training loss every N optimizer steps (mean over them)", positive_int, metavar="N")
    seed: int = opt(0, "random seed for initialisation, data order, augmentation and dropout", any_int, metavar="N")
    device: str = opt("auto", "auto (CUDA when present, else CPU), cpu, cuda or cuda:N", metavar="DEV")
    threads: int = opt(0, "CPU threads for PyTorch (0 = PyTorch's default)", nonneg_int, metavar="N")

    def validate(self) -> TrainConfig:
        if self.batch_size % self.accum_steps:
            raise ConfigError(f"--batch-size {self.batch_size} is not divisible by --accum-steps {self.accum_steps}")
        if self.min_lr > self.lr:
            raise ConfigError(f"--min-lr {self.min_lr} is larger than --lr {self.lr}")
        return self


# --- argparse bridge ----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser | Any, cls, title: str | None = None, skip: tuple[str, ...] = (),
                  defaults: dict | None = None) -> None:
    """Add ``--field-name`` for each field of the dataclass ``cls``. Defaults are left as None
    so :func:`from_args` can tell the options given on the command line from the others; the
    help shows the dataclass default, or ``defaults[name]`` where a task uses another one."""
    group = parser.add_argument_group(title) if title else parser
    for f in dataclasses.fields(cls):
        if f.name in skip or "help" not in f.metadata:
            continue
        m = f.metadata
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        default = (defaults or {}).get(f.name, default)
        opt_name = "--" + f.name.replace("_", "-")
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        dflt = "" if default is None or default == () else f" (default: {shown})"
        kw: dict[str, Any] = {"dest": f.name, "default": None, "help": m["help"] + dflt}
        if isinstance(default, bool):
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = m.get("type") or (type(default) if default is not None and not isinstance(default, tuple) else str)
            if m.get("choices"):
                kw["choices"] = m["choices"]
            if m.get("metavar") and not m.get("choices"):
                kw["metavar"] = m["metavar"]
            if m.get("nargs"):
                kw["nargs"] = m["nargs"]
            elif isinstance(default, tuple):
                kw["action"] = "append"
        group.add_argument(opt_name, **kw)


def from_args(cls, args: argparse.Namespace, base: dict | None = None):
    """(config, names given on the command line). ``base`` supplies values for the options not
    given (e.g. the saved config of a run being resumed); the dataclass defaults fill the rest."""
    given = {}
    for f in dataclasses.fields(cls):
        v = getattr(args, f.name, None)
        if v is not None:
            given[f.name] = tuple(v) if isinstance(v, list) else v
    values = dict(base or {})
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items() if k in names}
    values.update(given)
    return cls(**values), set(given)


def to_dict(cfg) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}

"""The training engine: one loop for every task.

A :class:`Task` knows its data and its loss; the :class:`Trainer` owns everything else —
AdamW with decoupled weight decay, warm-up and decay of the learning rate, gradient clipping
and accumulation, bf16 autocast, the EMA of the weights, evaluation, checkpoints, resuming,
metrics and data parallelism (DistributedDataParallel under ``torchrun``). It draws nothing: it
calls back whoever draws the learning curves (the run layer, :mod:`attnlab.runs.training`).

Reproducibility. The data order of an epoch depends only on (seed, epoch) and a batch's
augmentation only on (seed, epoch, step); dropout draws from the global RNG, whose state is
saved with each checkpoint. So a run resumed from any checkpoint retraces the uninterrupted
run exactly. A batch is split the same way whatever the number of processes (see
:class:`Plan`), so N processes with the same ``batch_size`` follow the 1-process run.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from attnlab.checkpoints.load import load_into
from attnlab.checkpoints.ours import metadata_for
from attnlab.checkpoints.rundir import has_record, load_weights, read_record
from attnlab.errors import AttnlabError, CheckpointError, ConfigError
from attnlab.train import checkpoint as ckpt
from attnlab.train import distributed as dist
from attnlab.train.config import TrainConfig, to_dict
from attnlab.train.ema import ModelEma
from attnlab.train.metrics import History
from attnlab.train.optim import Scheduler, build_optimizer, make_schedule
from attnlab.train.sampler import Plan


class TrainingDiverged(AttnlabError):
    """The loss or the gradient became NaN or infinite; training stopped without saving."""


@runtime_checkable
class Task(Protocol):
    """The part of training that depends on the problem.

    Batches may be any structure of tensors; the trainer moves them to the device. Loss and
    statistics are computed by the task; ``train_step`` and ``eval_step`` return statistics as
    *sums* over the batch (with a ``"count"``), which the trainer adds over batches and processes
    and hands to ``summarize``.

    Optional, read with these defaults when absent: ``higher_is_better = True`` (the rule of
    ``main_metric``), ``metric_label`` (``main_metric``: the plot's title),
    ``metric_percent = True`` (shown as a percentage), and ``state_dict()`` /
    ``load_state_dict(state)`` for state carried across steps that a resumed run needs (the
    hidden state of truncated back-propagation through time), ``lr_scales`` (default
    none): parameter-name prefix → factor on the learning rate (:func:`attnlab.train.optim.param_groups`),
    and ``budget_start`` (default: when training starts): the ``time.perf_counter()`` at which
    this command's ``--max-minutes`` began, for a task that works before training (a backbone's
    pretraining), so the budget covers that work too.
    """

    name: str  # "image", "lm", ...
    main_metric: str  # key of summarize()'s result that picks the best checkpoint
    # (larger is better, unless the task sets ``higher_is_better = False``, e.g. perplexity)

    def steps_per_epoch(self, plan: Plan) -> int: ...

    def train_batches(self, plan: Plan) -> Iterator[list[Any]]:
        """Optimizer steps from ``plan.start_step``: each a list of micro-batches for this process."""
        ...

    def train_step(self, model: nn.Module, batch: Any, cfg: TrainConfig) -> tuple[Tensor, dict[str, Tensor]]:
        """(mean loss to back-propagate, sums of statistics including "loss" and "count")."""
        ...

    def eval_batches(self, plan: Plan) -> Iterator[Any]: ...

    def eval_step(self, model: nn.Module, batch: Any, cfg: TrainConfig) -> dict[str, Tensor]: ...

    def summarize(self, sums: dict[str, Tensor]) -> dict[str, float]: ...

    def record(self) -> dict:
        """JSON-able description kept in every checkpoint (label names, normalisation, ...)."""
        ...


def to_device(batch, device: torch.device):
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def _add(into: dict[str, Tensor], stats: dict[str, Tensor]) -> None:
    for k, v in stats.items():
        v = v.detach().to(torch.float64) if isinstance(v, Tensor) else torch.tensor(float(v), dtype=torch.float64)
        into[k] = into[k] + v.to(into[k].device) if k in into else v.clone()


def reduce_sums(sums: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    """Add a dict of tensors over processes (one collective for all of them)."""
    if not sums:
        return {}
    keys = sorted(sums)
    flat = torch.cat([sums[k].reshape(-1).to(device, torch.float64) for k in keys])
    dist.all_reduce_sum(flat)
    out, i = {}, 0
    for k in keys:
        n = sums[k].numel()
        out[k] = flat[i:i + n].reshape(sums[k].shape).cpu()
        i += n
    return out


def model_device(model: nn.Module) -> torch.device:
    """Where a model's weights are (CPU for a model without any)."""
    return next(model.parameters(), torch.empty(0)).device


def evaluation_sums(task: Task, model: nn.Module, batches, device: torch.device, cfg: TrainConfig | None = None,
                    progress: bool = False, total: int | None = None) -> dict[str, Tensor]:
    """The evaluation loop, for training and for ``attnlab eval``: the task's statistics summed
    over ``batches`` (this process's share), the model in eval mode, without gradients."""
    was = model.training
    model.eval()
    sums: dict[str, Tensor] = {}
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, total=total, desc="evaluating", leave=False, disable=None, unit="batch", dynamic_ncols=True)
    with torch.no_grad():
        for batch in batches:
            _add(sums, task.eval_step(model, to_device(batch, device), cfg))
    model.train(was)
    return sums


def progress_bar(iterable, total: int, desc: str, enabled: bool, leave: bool = False):
    """A tqdm bar over ``iterable`` counting steps (shown on a terminal only), or the iterable itself."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=leave, dynamic_ncols=True, disable=None, unit="step")


class Trainer:
    """Train ``model`` on ``task`` with ``cfg``, writing into ``run_dir`` (rank 0 only).

    ``meta`` is stored in every checkpoint record (model name and config, task config...).
    ``log`` receives one line per epoch (None: silent); ``progress`` shows tqdm bars.
    ``draw_curves(trainer)`` is called on rank 0 of a run with a run directory whenever its
    learning curves are due: after an epoch longer than 15 s, after the last epoch and after one
    cut by --max-minutes (the run layer passes :func:`attnlab.viz.curves.save_curves`).
    """

    def __init__(self, model: nn.Module, task: Task, cfg: TrainConfig, run_dir: str | Path | None,
                 meta: dict | None = None, log: Callable[[str], None] | None = None, progress: bool = True,
                 draw_curves: Callable[[Trainer], Any] | None = None) -> None:
        self.cfg = cfg.validate()
        self.draw_curves = draw_curves
        self.task = task
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.meta = dict(meta or {})
        self.log = log or (lambda s: None)
        self.info = dist.info()
        self.progress = progress and self.info.is_main
        self.device = self.info.device if self.info.distributed else dist.resolve_device(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.batch_size % (cfg.accum_steps * self.info.world_size):
            raise ConfigError(f"--batch-size {cfg.batch_size} must be divisible by --accum-steps x processes "
                              f"= {cfg.accum_steps} x {self.info.world_size}")
        self.model = model.to(self.device)
        self.ddp = None
        if self.info.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device] if self.device.type == "cuda" else None
            self.ddp = DDP(self.model, device_ids=ids)
        self.optimizer = build_optimizer(self.model, cfg.lr, cfg.weight_decay, cfg.betas, cfg.eps, cfg.optimizer, cfg.momentum,
                                         getattr(task, "lr_scales", None))
        self.plan = Plan(batch_size=cfg.batch_size, accum_steps=cfg.accum_steps, rank=self.info.rank,
                         world_size=self.info.world_size, seed=cfg.seed)
        self.steps_per_epoch = task.steps_per_epoch(self.plan)
        if self.steps_per_epoch < 1:
            raise ConfigError(f"--batch-size {cfg.batch_size} is larger than the training set: no full batch per epoch")
        self.total_steps = self.steps_per_epoch * cfg.epochs
        warm = cfg.warmup_steps if cfg.warmup_steps is not None else round(cfg.warmup_epochs * self.steps_per_epoch)
        self.warmup_steps = min(warm, self.total_steps)
        factor = make_schedule(cfg.schedule, self.total_steps, self.warmup_steps, cfg.min_lr / cfg.lr)
        self.scheduler = Scheduler(self.optimizer, factor)
        self.ema = ModelEma(self.model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.weights_metadata = metadata_for(model)  # the weights carry the model's name and config
        self.history = History()
        self.step = 0  # optimizer steps done
        self.epoch = 0  # the current epoch (0-based); == epochs when finished
        self.step_in_epoch = 0
        self.epoch_sums: dict[str, Tensor] = {}
        self.best: dict | None = None
        self.elapsed = 0.0  # wall-clock seconds of training and evaluation, over all sessions
        self.stopped_by_time = False  # --max-minutes ran out
        self.train_time = 0.0
        self.samples = 0
        self._t0 = time.perf_counter()
        self._budget_start: float | None = getattr(task, "budget_start", None)
        self._log_sums: dict[str, Tensor] = {}
        self._log_n = 0

    # --- models ---------------------------------------------------------------------------------

    @property
    def train_model(self) -> nn.Module:
        return self.ddp if self.ddp is not None else self.model

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def _autocast(self):
        if self.cfg.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # --- checkpoints ----------------------------------------------------------------------------

    def record(self) -> dict:
        return {
            "task": self.task.name,
            **self.meta,
            **self.task.record(),
            "train_config": to_dict(self.cfg),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "metrics": self.history.epochs[-1] if self.history.epochs else {},
            "best": self.best,
            "elapsed": round(self.elapsed_now(), 3),
            "world_size": self.info.world_size,
            "stopped_by_time": self.stopped_by_time,  # --max-minutes ended this session's training
        }

    def session_seconds(self) -> float:
        """Seconds since this process started (or resumed) training."""
        return time.perf_counter() - self._t0

    def elapsed_now(self) -> float:
        return self.elapsed + (time.perf_counter() - self._t0)

    def save(self, best: bool = False) -> None:
        """Save the last (and best) checkpoint. A collective: call on every process."""
        rng = dist.all_gather_object(ckpt.rng_state())
        if not self.info.is_main or self.run_dir is None:
            dist.barrier()
            return
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": rng,
            "progress": {"step": self.step, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                         "elapsed": self.elapsed_now(), "train_time": self.train_time, "samples": self.samples},
            "epoch_sums": dict(self.epoch_sums),
            "log_sums": dict(self._log_sums), "log_n": self._log_n,
            "history": self.history.state_dict(),
            "best": self.best,
            "task": self.task.state_dict() if hasattr(self.task, "state_dict") else None,
        }
        ckpt.save(
            self.run_dir, step=self.step, record=self.record(), weights=self.eval_model.state_dict(), state=state,
            metadata=self.weights_metadata,
            train_weights=self.model.state_dict() if self.ema is not None else None,
            tags=("last", "best") if best else ("last",),
        )
        self.write_metrics()
        dist.barrier()

    def resume(self, run_dir: str | Path) -> None:
        """Load the last checkpoint of ``run_dir``: weights, optimizer, schedule, RNG, progress."""
        rec = read_record(run_dir, "last")
        state = ckpt.load_state(run_dir, rec)
        key = "train_weights" if "train_weights" in rec else "weights"
        load_into(self.model, load_weights(run_dir, rec, key), f"{run_dir}/{rec['path']}")
        if self.ema is not None:
            if "train_weights" not in rec:
                raise CheckpointError(f"{run_dir} was trained without EMA; resume it without --ema-decay")
            load_into(self.ema.module, load_weights(run_dir, rec), f"{run_dir}/{rec['path']}")
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        p = state["progress"]
        self.step, self.epoch, self.step_in_epoch = int(p["step"]), int(p["epoch"]), int(p["step_in_epoch"])
        self.elapsed, self.train_time, self.samples = float(p["elapsed"]), float(p["train_time"]), int(p["samples"])
        self.epoch_sums = {k: v.clone() for k, v in state["epoch_sums"].items()}
        self._log_sums = {k: v.clone() for k, v in state.get("log_sums", {}).items()}
        self._log_n = int(state.get("log_n", 0))
        self.history.load_state_dict(state["history"])
        self.best = state["best"]
        if state.get("task") is not None and hasattr(self.task, "load_state_dict"):
            self.task.load_state_dict(state["task"])
        rngs = state["rng"]
        if len(rngs) == self.info.world_size:
            ckpt.set_rng_state(rngs[self.info.rank])
        else:
            warnings.warn(f"resuming a {len(rngs)}-process run on {self.info.world_size} processes: "
                          "dropout will not retrace the original run", stacklevel=2)
            ckpt.seed_everything(self.cfg.seed + 7919 * (self.info.rank + 1) + self.step)
        self._t0 = time.perf_counter()

    # --- metrics --------------------------------------------------------------------------------

    def write_metrics(self) -> None:
        if not self.info.is_main or self.run_dir is None:
            return
        self.history.write(self.run_dir, {"task": self.task.name, "main_metric": self.task.main_metric, "best": self.best})

    def plot(self) -> None:
        """The learning curves are due: ``draw_curves`` draws them (rank 0, a run directory, an epoch done)."""
        if self.draw_curves is None or not self.info.is_main or self.run_dir is None or not self.history.epochs:
            return
        self.draw_curves(self)

    # --- the loop -------------------------------------------------------------------------------

    def evaluate(self, model: nn.Module | None = None) -> dict[str, float]:
        with self._autocast():
            sums = evaluation_sums(self.task, model or self.eval_model, self.task.eval_batches(self.plan), self.device,
                                   self.cfg, self.progress)
        return self.task.summarize(reduce_sums(sums, self.device))

    def _optimizer_step(self, micro: list[Any]) -> dict[str, Tensor]:
        model = self.train_model
        sums: dict[str, Tensor] = {}
        for j, mb in enumerate(micro):
            sync = self.ddp is None or j == len(micro) - 1
            with (contextlib.nullcontext() if sync else self.ddp.no_sync()):
                with self._autocast():
                    loss, stats = self.task.train_step(model, to_device(mb, self.device), self.cfg)
                (loss / len(micro)).backward()
            _add(sums, stats)
        sums = reduce_sums(sums, self.device)
        loss = float(sums["loss"] / sums["count"].clamp(min=1))
        if not math.isfinite(loss):
            self._diverged("the loss", loss)
        if self.cfg.clip_grad > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad)
            if not torch.isfinite(norm):
                self._diverged("the gradient norm", float(norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return sums

    def _diverged(self, what: str, value: float) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        where = f"step {self.step + 1} (epoch {self.epoch + 1}, batch {self.step_in_epoch + 1})"
        if self.run_dir is not None and has_record(self.run_dir, "last"):
            try:
                rec = read_record(self.run_dir, "last", check=False)
                kept = f"the last good checkpoint is kept: step {rec['step']} in {self.run_dir}"
            except CheckpointError:
                kept = f"the last good checkpoint is kept in {self.run_dir}"
        else:
            kept = "no checkpoint had been saved yet"
        raise TrainingDiverged(f"{what} became {value} at {where}; stopped — {kept}. "
                               "Try a lower --lr, a longer warm-up or --clip-grad")

    def fit(self, resume_from: str | Path | None = None) -> dict:
        """Train to ``cfg.epochs``; return the final summary (metrics, best, time)."""
        cfg = self.cfg
        if resume_from is not None:
            self.resume(resume_from)
        else:
            ckpt.seed_everything(cfg.seed + 7919 * self.info.rank)
        self.model.train()
        self._t0 = time.perf_counter()
        while self.epoch < cfg.epochs:
            epoch = self.epoch
            plan = replace(self.plan, epoch=epoch, start_step=self.step_in_epoch)
            t_epoch = time.perf_counter()
            n_before = self.samples
            bar = progress_bar(self.task.train_batches(plan), self.steps_per_epoch - self.step_in_epoch,
                               f"epoch {epoch + 1}/{cfg.epochs}", self.progress)
            for micro in bar:
                t = time.perf_counter()
                sums = self._optimizer_step(micro)
                self.train_time += time.perf_counter() - t
                self.samples += int(sums["count"])
                _add(self.epoch_sums, sums)
                _add(self._log_sums, sums)
                self._log_n += 1
                self.step += 1
                self.step_in_epoch += 1
                if self._log_n >= cfg.log_every or self.step_in_epoch == self.steps_per_epoch:
                    self._log_step()
                if hasattr(bar, "set_postfix_str"):
                    bar.set_postfix_str(f"loss {float(sums['loss'] / sums['count']):.4f}  lr {self.scheduler.lr:.2e}")
                if cfg.save_every and self.step % cfg.save_every == 0 and self.step_in_epoch < self.steps_per_epoch:
                    self.save()
                if self._out_of_time():
                    break
            if hasattr(bar, "close"):
                bar.close()
            done = self.step_in_epoch
            if self.stopped_by_time and done < self.steps_per_epoch:
                self._cut_epoch(epoch, time.perf_counter() - t_epoch, self.samples - n_before)
            else:
                self._end_epoch(epoch, time.perf_counter() - t_epoch, self.samples - n_before)
            if self.stopped_by_time:
                self.log(f"stopped by --max-minutes {cfg.max_minutes:g} after {done} of the {self.steps_per_epoch} "
                         f"batches of epoch {epoch + 1} (step {self.step}); --resume continues from there")
                break
        dist.barrier()  # the last epoch (or the cut one) has had its curves drawn already
        self.write_metrics()
        return {"best": self.best, "metrics": self.history.epochs[-1] if self.history.epochs else {},
                "elapsed": self.elapsed_now(), "train_time": self.train_time, "steps": self.step,
                "stopped_by_time": self.stopped_by_time, "metric_percent": getattr(self.task, "metric_percent", True),
                "run_dir": str(self.run_dir) if self.run_dir else None}

    def _out_of_time(self) -> bool:
        """--max-minutes of this session have run out, counted from the task's ``budget_start``
        when it worked before training (rank 0's clock decides, so every process stops at the
        same step). A resumed run gets its own --max-minutes."""
        if not self.cfg.max_minutes:
            return False
        before = 0.0 if self._budget_start is None else max(0.0, self._t0 - self._budget_start)
        late = before + self.session_seconds() > self.cfg.max_minutes * 60
        self.stopped_by_time = bool(dist.broadcast_object(late)) if self.info.distributed else late
        return self.stopped_by_time

    def _log_step(self) -> None:
        s = self._log_sums
        row = {"step": self.step, "epoch_float": round(self.step / self.steps_per_epoch, 4),
               "loss": float(s["loss"] / s["count"].clamp(min=1)), "lr": self.scheduler.lr}
        self.history.steps.append(row)
        self._log_sums, self._log_n = {}, 0

    def _validate(self, row: dict[str, Any], epoch: float) -> bool:
        """Evaluate into ``row``; True if this is the best checkpoint so far."""
        t = time.perf_counter()
        val = self.evaluate()
        row.update({f"val_{k}": v for k, v in val.items()})
        row["eval_seconds"] = round(time.perf_counter() - t, 3)
        m = val.get(self.task.main_metric)
        higher = getattr(self.task, "higher_is_better", True)
        if m is not None and (self.best is None or (m > self.best["value"] if higher else m < self.best["value"])):
            self.best = {"epoch": epoch, "step": self.step, "metric": self.task.main_metric, "value": m}
            return True
        return False

    def _end_epoch(self, epoch: int, seconds: float, samples: int) -> None:
        cfg = self.cfg
        row: dict[str, Any] = {"epoch": epoch + 1, "step": self.step, "lr": self.scheduler.lr}
        row.update({f"train_{k}": v for k, v in self.task.summarize(self.epoch_sums).items()})
        evaluated = (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs or self.stopped_by_time
        is_best = self._validate(row, epoch + 1) if evaluated else False
        row["samples_per_s"] = round(samples / max(seconds, 1e-9), 1)
        self.epoch += 1
        self.step_in_epoch = 0
        self.epoch_sums = {}
        row["time"] = round(self.elapsed_now(), 2)
        self.history.epochs.append(row)
        self.save(best=is_best)
        if seconds > 15 or self.epoch == cfg.epochs or self.stopped_by_time:
            self.plot()
        self.log(self.format_row(row))

    def _cut_epoch(self, epoch: int, seconds: float, samples: int) -> None:
        """--max-minutes stopped the run inside an epoch: evaluate and save *without* finishing
        the epoch (its progress and partial sums are kept), so --resume continues mid-epoch
        exactly as if it had not stopped. The row is marked ``"cut": 1``."""
        at = round(epoch + self.step_in_epoch / self.steps_per_epoch, 4)
        row: dict[str, Any] = {"epoch": at, "step": self.step, "lr": self.scheduler.lr, "cut": 1}
        row.update({f"train_{k}": v for k, v in self.task.summarize(self.epoch_sums).items()})
        is_best = self._validate(row, at)
        row["samples_per_s"] = round(samples / max(seconds, 1e-9), 1)
        row["time"] = round(self.elapsed_now(), 2)
        self.history.epochs.append(row)
        self.save(best=is_best)
        self.plot()
        self.log(self.format_row(row))

    def format_row(self, row: dict) -> str:
        m = self.task.main_metric
        pct = getattr(self.task, "metric_percent", True)
        f = (lambda v: f"{100 * v:6.2f}%") if pct else (lambda v: f"{v:.4g}")
        parts = [f"epoch {row['epoch']:>3g}/{self.cfg.epochs}", f"train loss {row.get('train_loss', math.nan):.4f}"]
        if f"train_{m}" in row:
            parts.append(f"{m} {f(row[f'train_{m}'])}")
        if "val_loss" in row:
            parts.append(f"| val loss {row['val_loss']:.4f}")
        if f"val_{m}" in row:
            parts.append(f"{m} {f(row[f'val_{m}'])}")
        parts.append(f"| {row['samples_per_s']:.0f}/s  {row['time']:.0f}s")
        return "  ".join(parts)

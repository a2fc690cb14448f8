"""Using a model: the one front door, :func:`open`, for every command that reads one (``eval``,
``predict``, ``generate``, ``translate``, ``viz``, ``export``) and the experiments, and the one
:func:`evaluate`."""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any

import torch

from attnlab.checkpoints import shipped
from attnlab.checkpoints.rundir import has_record, load_weights, locate, read_record
from attnlab.errors import CheckpointError, ConfigError
from attnlab.io import atomic_write_json, atomic_write_text, check_output_dir
from attnlab.tasks import get_spec
from attnlab.tasks.spec import LoadedRun, TaskSpec


def open(spec: str | Path, which: str | None = None, *, default: str = "best", seed: int = 0,
         model_args: dict | None = None, device: str | torch.device = "cpu", int8: bool = False,
         compile: bool = False) -> LoadedRun:
    """The model ``spec`` names, in eval mode, as a :class:`LoadedRun`:

    - a run directory: ``RUN_DIR`` or ``RUN_DIR:best|last`` (``which`` chooses for a spec without
      a tag; giving both is refused; with neither, ``default``; best falls back to last): its
      model rebuilt through the registry from its record, its weights, its task and extras;
    - a checkpoint file or directory that carries its config (:func:`attnlab.load_model`);
    - a registered model name that ships weights (:mod:`attnlab.checkpoints.shipped`): those,
      with the labels and normalisation they were trained with as extras;
    - another registered model name: fresh weights (seeded with ``seed``; ``model_args`` override its
      config fields, and are refused for a run or a file, which keep their own).

    ``int8``: int8 Linear layers (:func:`attnlab.export.quantize_int8`, the backend fastest on
    this CPU, fp32 kept if none is faster: ``int8_choice`` says which); ``compile``: each Linear
    layer compiled (:func:`attnlab.export.compile_linears`; ``compiled`` records it)."""
    from attnlab.models.registry import create_model, is_model, list_models

    found = locate(spec, which, default)
    if found is not None or Path(spec).exists():
        if model_args:
            raise ConfigError(f"model arguments are for a registered model name; {str(spec)!r} keeps the settings it "
                              "was trained with: drop --model-arg")
        run = _open_run(*found) if found is not None else _open_file(Path(spec))
    elif shipped.entry(str(spec)) is not None:
        run = _open_shipped(str(spec), model_args)
    elif is_model(str(spec)):
        torch.manual_seed(seed)
        run = LoadedRun(create_model(str(spec), **(model_args or {})).eval(), str(spec), random_init=True)
    else:
        close = difflib.get_close_matches(str(spec), list_models(), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; 'attnlab models' lists the names"
        raise ConfigError(f"{str(spec)!r} is neither a model name nor an existing checkpoint file or run directory{hint}")
    run.model = run.model.to(device)
    if int8:
        from attnlab.export.int8 import choose_backend, linear_width, quantize_int8

        chosen = choose_backend(linear_width(run.model))
        if chosen.backend is not None:
            run.model = quantize_int8(run.model, backend=chosen.backend)
        run.int8, run.int8_choice = True, chosen.describe()
    if compile:
        from attnlab.export.int8 import compile_linears

        run.model, run.compiled = compile_linears(run.model), True
    return run


def _open_file(path: Path) -> LoadedRun:
    """A checkpoint that carries its config; ``extras["normalize"]`` is the input its layout's
    weights expect, when the layout fixes it (the report's ``normalize``)."""
    from attnlab.checkpoints import load_model
    from attnlab.data.transforms import Normalize

    model, report = load_model(path, return_report=True)
    stats = report["normalize"]
    return LoadedRun(model, path.stem, extras={} if stats is None else {"normalize": Normalize(**stats)})


def _open_shipped(name: str, model_args: dict | None) -> LoadedRun:
    """A registered name with the weights shipped for it; its entry carries what the task's
    extras are read from (the ``labels`` and ``normalize`` of the run that trained them)."""
    from attnlab.models.registry import create_model

    model = create_model(name, **(model_args or {}))
    e = shipped.load_shipped(model, name)
    return LoadedRun(model.eval(), name, extras=get_spec(e["task"]).load_extras(None, e))


def _open_run(run_dir: Path, which: str) -> LoadedRun:
    """Rebuild a run's model through the registry from its record, load its weights (through
    the one strict loader) and the task's extras."""
    from attnlab.checkpoints.load import load_into
    from attnlab.models.registry import create_model

    spec = task_of(run_dir)
    rec = read_record(run_dir, which)
    m = rec.get("model")
    if not isinstance(m, dict) or "name" not in m or "config" not in m:
        raise CheckpointError(f"{run_dir}: the checkpoint record does not name its model and config "
                              "(a run from an older attnlab); retrain it")
    try:
        model = create_model(m["name"], **m["config"])
    except ConfigError as e:
        raise CheckpointError(f"{run_dir}: its model record does not build a model ({e})") from None
    load_into(model, load_weights(run_dir, rec), f"{run_dir}/{rec['path']}/{rec['weights']}")
    extras = spec.load_extras(run_dir, rec) if spec.load_extras else {}
    return LoadedRun(model.eval(), m["name"], run_dir, which, rec, spec, extras)


def task_of(run_dir: str | Path) -> TaskSpec:
    """The task of a run directory (``RUN_DIR:tag`` too), imported from where it is declared, or
    of a model name that ships weights."""
    found = locate(run_dir)
    named = shipped.entry(str(run_dir)) if found is None and not Path(run_dir).exists() else None
    if named is not None:
        return get_spec(named["task"])
    if found is None:
        read_record(run_dir)  # says what is wrong with it
    rec = read_record(found[0], "last" if has_record(found[0], "last") else "best")
    return get_spec(rec.get("task", "?"), rec.get("task_module"))


def evaluate(run: LoadedRun, eval_config: Any, out_dir: str | Path | None = None, progress: bool = True) -> dict:
    """The task's evaluation of a run (a task without one: its training metrics on its
    validation data, :func:`validation_metrics`); results.json, the task's files (pictures,
    texts such as the hypotheses of a translation) and the pictures drawn of its results
    (:func:`_pictures`) go to ``out_dir`` (default ``RUN_DIR/eval/<what was evaluated>``, with
    ``-int8`` for an int8 model and ``-compiled`` for a compiled one), whose paths are added to
    the results."""
    from attnlab.export.int8 import int8_backend
    from attnlab.viz.common import save_figure

    if run.spec is None:
        raise ConfigError(f"{run.name} is not a trained run: 'attnlab eval' reads a run directory")
    if run.spec.evaluate is not None:
        results, files = run.spec.evaluate(run, eval_config, progress)
    else:
        results, files = validation_metrics(run, progress), {}
    files = {**_pictures(run, results), **files}
    # int8 or compiled scores never replace fp32 ones, nor each other
    slug = results.pop("slug", "default") + ("-int8" if run.int8 else "") + ("-compiled" if run.compiled else "")
    out = Path(out_dir) if out_dir else run.run_dir / "eval" / slug
    check_output_dir(out)
    for name, content in files.items():  # a picture, or the text of a file such as hypotheses.txt
        if isinstance(content, str):
            atomic_write_text(out / name, content)
            results[name.replace(".", "_")] = str(out / name)
        else:
            results[f"{name}_png"] = str(save_figure(content, out / f"{name}.png"))
    results.update(int8=run.int8, int8_backend=int8_backend(run.model) if run.int8 else None, compiled=run.compiled,
                   results_json=str(out / "results.json"))
    atomic_write_json(out / "results.json", results)
    return results


def _pictures(run: LoadedRun, results: dict) -> dict:
    """The pictures the run layer draws of a task's results: a ``confusion_matrix`` over ``labels``
    (an image run's evaluation) as ``confusion.png``."""
    if "confusion_matrix" not in results:
        return {}
    from attnlab.viz.curves import plot_confusion

    title = f"{run.name} on {results['dataset']}"
    return {"confusion": plot_confusion(results["confusion_matrix"], results["labels"], title=title)}


def validation_metrics(run: LoadedRun, progress: bool = True) -> dict:
    """The metrics the engine computed while training, recomputed on the run's validation data
    (rebuilt from its record): the evaluation of a task that declares none."""
    from attnlab.train.config import TrainConfig
    from attnlab.train.engine import evaluation_sums, model_device
    from attnlab.train.sampler import Plan

    spec, rec = run.spec, run.record
    fields = spec.data_config.__dataclass_fields__
    dc = spec.data_config(**{k: v for k, v in (rec.get("data_config") or {}).items() if k in fields})
    data = spec.load_data(dc, run.model.cfg, run.run_dir, progress, model_name=run.name)
    train = TrainConfig(**{k: v for k, v in (rec.get("train_config") or {}).items()
                           if k in TrainConfig.__dataclass_fields__})
    task = spec.make_task(data, copy.deepcopy(run.model), train)  # (which may load starting weights into it)
    sums = evaluation_sums(task, run.model, task.eval_batches(Plan()), model_device(run.model), progress=progress)
    return {"run_dir": str(run.run_dir), "checkpoint": run.which, "step": rec.get("step"), "model": run.name,
            "task": spec.name, **{f"val_{k}": v for k, v in task.summarize(sums).items()}}


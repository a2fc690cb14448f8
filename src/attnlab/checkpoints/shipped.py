"""Weights shipped inside the package (issue 23 point 5): trained models that work offline,
``attnlab.create_model(NAME, pretrained=True)`` and ``attnlab predict NAME IMAGE``.

The folder ``attnlab/weights/`` (:data:`WEIGHTS_DIR`) holds, per shipped weights ``W`` (a
name such as ``cct_2_3x2_32.cifar10``: the model, a dot, what it was trained on), ``W.safetensors``
and its model card ``W.md``, and one table, ``shipped.json``: registry model name -> ::

    {"file": "W.safetensors", "sha256": "...", "task": "image",
     "labels": [class names, in the head's order], "normalize": {"mean": [...], "std": [...]}}

``task``, ``labels`` and ``normalize`` are the run record's own (what the image task records of
its training data), so the weights are used exactly as the run that trained them was. The sha256
is checked before every load; files are read with safetensors only (nothing is unpickled).

Shipping a trained run (its ``best`` checkpoint; ``attnlab eval RUN_DIR`` first puts the test
accuracy on the card)::

    python -c "from attnlab.checkpoints.shipped import ship_run; print(ship_run('runs/cct2'))"

then commit ``src/attnlab/weights/``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
from pathlib import Path

from torch import nn

from attnlab.checkpoints.io import read_safetensors
from attnlab.checkpoints.load import load_into
from attnlab.errors import CheckpointError

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
TABLE = "shipped.json"
#: the record fields an entry copies from the run that trained the weights
RECORD_FIELDS = ("task", "labels", "normalize")
#: train_config fields the model card states as the recipe
RECIPE = ("epochs", "batch_size", "lr", "min_lr", "schedule", "warmup_epochs", "optimizer", "weight_decay",
          "label_smoothing", "clip_grad", "ema_decay", "precision", "seed")


def table() -> dict[str, dict]:
    """Registry model name -> its shipped weights' entry (see the module docstring)."""
    path = WEIGHTS_DIR / TABLE
    try:
        out = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"the table of shipped weights {path} is unreadable ({e}); reinstall attnlab") from None
    if not isinstance(out, dict):
        raise CheckpointError(f"the table of shipped weights {path} is not a JSON object; reinstall attnlab")
    return out


def entry(name: str) -> dict | None:
    """The shipped weights' entry of registry model ``name``, or None when none ship."""
    return table().get(name)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verified_file(name: str, e: dict) -> Path:
    """The weights file of entry ``e`` (model ``name``), once its sha256 is the table's."""
    path = WEIGHTS_DIR / e["file"]
    if not path.is_file():
        raise CheckpointError(f"the shipped weights of {name!r}, {path}, are missing; reinstall attnlab")
    got = sha256_of(path)
    if got != e["sha256"]:
        raise CheckpointError(f"the shipped weights of {name!r}, {path}, are corrupt: sha256 {got} where "
                              f"{TABLE} says {e['sha256']}; reinstall attnlab")
    return path


def load_shipped(model: nn.Module, name: str, new_head: bool = False) -> dict:
    """Load the weights shipped for ``name`` into ``model`` (built by that name), through the
    one strict loader, and give it timm's ``pretrained_cfg`` of the weights (its ``mean`` and
    ``std`` are those they were trained with, which :func:`attnlab.models.capabilities.input_stats`
    reads; ``num_classes`` and ``label_names`` are the weights' classes). ``new_head``: a
    classifier of another size, or none, is left as the model has it (a fresh head). Returns the
    entry."""
    e = entry(name)
    if e is None:
        raise CheckpointError(f"attnlab ships no weights for {name!r}")
    path = verified_file(name, e)
    tensors, _ = read_safetensors(path)
    if new_head:
        own = model.state_dict()
        tensors = {k: t for k, t in tensors.items() if k in own or not k.startswith("head.")}
    load_into(model, tensors, f"shipped weights {path.name}", new_head="head." if new_head else None)
    image = model.image_input
    model.pretrained_cfg = {"architecture": name, "file": str(path), "input_size": (image.channels, *image.size),
                            "mean": tuple(e["normalize"]["mean"]), "std": tuple(e["normalize"]["std"]),
                            "num_classes": len(e["labels"]), "label_names": list(e["labels"]), "classifier": "head"}
    return e


# --------------------------------------------------------------------------- shipping a run
def ship_run(run_dir: str | Path, which: str = "best", weights_name: str | None = None,
             date: datetime.date | None = None) -> dict:
    """Ship the ``which`` checkpoint of a trained run as its model's weights: ``W.safetensors``
    (written atomically), its model card ``W.md`` and its entry in the table, all in
    :data:`WEIGHTS_DIR`. ``weights_name`` ``W`` defaults to ``MODEL.DATASET``. The run must have
    trained the registered model as it is registered (dropout rates aside), so that
    ``create_model(MODEL)`` is the model the weights fit. Returns the entry."""
    from attnlab.checkpoints.rundir import load_weights, read_record
    from attnlab.io import atomic_write_json, atomic_write_text, save_safetensors_atomic
    from attnlab.models.registry import config_dict, create_model

    run_dir = Path(run_dir)
    rec = read_record(run_dir, which)
    missing = [k for k in RECORD_FIELDS if k not in rec]
    if missing:
        raise CheckpointError(f"{run_dir}: its record has no {', '.join(missing)}; only image runs can ship")
    name, config = rec["model"]["name"], rec["model"]["config"]
    model = create_model(name)
    registered = json.loads(json.dumps(config_dict(model)))
    changed = sorted(k for k, v in config.items() if "drop" not in k and registered.get(k) != v)
    if changed:
        raise CheckpointError(f"{run_dir} trained {name} with {', '.join(f'{k}={config[k]!r}' for k in changed)}, "
                              f"which create_model({name!r}) does not build; ship runs of registered models as they are")
    tensors = load_weights(run_dir, rec)
    load_into(model, tensors, f"{run_dir}:{which}")  # every key and shape fits the registered model
    stem = weights_name or f"{name}.{re.sub(r'[^A-Za-z0-9_-]+', '_', rec['dataset']['name'])}"
    path = WEIGHTS_DIR / f"{stem}.safetensors"
    save_safetensors_atomic(tensors, path, metadata={"format": "pt", "model": name})
    e = {"file": path.name, "sha256": sha256_of(path), **{k: rec[k] for k in RECORD_FIELDS}}
    atomic_write_text(path.with_suffix(".md"), model_card(run_dir, which, rec, e, date or datetime.date.today()))
    atomic_write_json(WEIGHTS_DIR / TABLE, {**table(), name: e})
    return e


def model_card(run_dir: Path, which: str, rec: dict, e: dict, date: datetime.date) -> str:
    """The card of shipped weights: data, recipe, command, test accuracy, date."""
    name, data, train = rec["model"]["name"], rec.get("dataset") or {}, rec.get("train_config") or {}
    try:
        command = " ".join(json.loads((run_dir / "run.json").read_text())["command"])
    except (OSError, ValueError, KeyError):
        command = "not recorded"
    recipe = ", ".join(f"{k}={train[k]}" for k in RECIPE if k in train)
    size = "x".join(map(str, data.get("image_size", [])))
    return "\n".join([
        f"# {Path(e['file']).stem}",
        "",
        f"`{name}` trained by attnlab; `attnlab.create_model({name!r}, pretrained=True)` and "
        f"`attnlab predict {name} IMAGE` load it offline.",
        "",
        f"- Data: {data.get('spec', '?')} ({data.get('train_size', '?')} training images, validation: "
        f"{data.get('val_source', '?')}, {data.get('val_size', '?')} images; {size} pixels, "
        f"{data.get('channels', '?')} channels)",
        f"- Classes ({len(e['labels'])}): {', '.join(e['labels'])}",
        f"- Normalisation (pixels in [0, 1]): mean {e['normalize']['mean']}, std {e['normalize']['std']}",
        f"- Recipe: {recipe}; augmentation {rec.get('augment')}; model config {json.dumps(rec['model']['config'])}",
        f"- Command: `{command}`",
        f"- Test accuracy: {measured_accuracy(run_dir, rec)}",
        f"- Checkpoint: {run_dir.name}:{which} (epoch {rec.get('epoch')}, step {rec.get('step')})",
        f"- Date: {date.isoformat()}",
        f"- sha256: {e['sha256']}",
        "",
    ])


def measured_accuracy(run_dir: Path, rec: dict) -> str:
    """The checkpoint's test accuracy: from an ``attnlab eval`` of it (fp32), else its validation
    accuracy when its validation set is the test split, else a note that it was not measured."""
    spec = (rec.get("dataset") or {}).get("spec")
    for path in sorted(run_dir.glob("eval/*/results.json")):
        r = json.loads(path.read_text())
        if (r.get("split"), r.get("checkpoint"), r.get("dataset"), r.get("int8"), r.get("compiled")) == \
                ("test", rec["path"], spec, False, False):
            return f"{r['accuracy']:.4f} on {r['images']} test images of {spec} ({path.relative_to(run_dir)})"
    metrics = rec.get("metrics") or {}
    if (rec.get("dataset") or {}).get("val_source") == "test split" and "val_acc" in metrics:
        return f"{metrics['val_acc']:.4f} (the run's validation accuracy; its validation set is {spec}'s test split)"
    return f"not measured (run 'attnlab eval {run_dir}' and ship again)"

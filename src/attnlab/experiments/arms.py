"""Arms that differ only in what an experiment studies (issue 21, point 4): an arm's set-up read
from its run record as flat dotted paths (``model.position``, ``train.lr``, ``data.lag``), the
fields in which two arms of one seed differ, and those not among the experiment's declared
``variables``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

NOT_SETUP = ("train.seed", "train.threads", "train.device")  # differ between seeds and machines, not arms


def _flat(prefix: str, d: dict) -> dict:
    return {f"{prefix}.{k}": list(v) if isinstance(v, tuple) else v for k, v in (d or {}).items()}


def arm_setup(summary: dict) -> dict:
    """How an arm was set up, as flat dotted paths: ``task``, ``model.name``, ``model.<field>`` (the
    model's whole config, defaults included), ``train.<field>``, ``data.<field>`` from its run's last
    checkpoint record (run.json for a run that never saved one), plus ``steps``, the optimizer steps it
    trained (absent when it diverged). The seed, threads and device (:data:`NOT_SETUP`) are left out."""
    from attnlab.checkpoints.rundir import has_record, read_record

    run_dir = Path(summary["run_dir"])
    rec = read_record(run_dir, "last", check=False) if has_record(run_dir, "last") else \
        json.loads((run_dir / "run.json").read_text())
    setup = {"task": rec.get("task"), "model.name": rec["model"]["name"], **_flat("model", rec["model"]["config"]),
             **_flat("train", rec.get("train_config")), **_flat("data", rec.get("data_config"))}
    if not summary.get("diverged") and summary.get("steps") is not None:
        setup["steps"] = summary["steps"]
    return {k: v for k, v in setup.items() if k not in NOT_SETUP}


def setup_differences(a: dict, b: dict) -> list[str]:
    """The fields in which two arm set-ups differ. Arms of two different models differ in
    ``model.name`` only: their configs are not field for field comparable."""
    keys = sorted(a.keys() | b.keys())
    if a.get("model.name") != b.get("model.name"):
        keys = [k for k in keys if not k.startswith("model.")] + ["model.name"]
    return sorted({k for k in keys if a.get(k, "(absent)") != b.get(k, "(absent)")})


def arm_differences(arms: dict) -> dict[tuple[str, str], list[str]]:
    """For every pair of arms of one seed and one task (``arms``: results.json's, arm -> summary with
    its ``run_dir``): the set-up fields in which they differ. Arms of different tasks answer different
    parts of a question (the LM and the ViT of layernorm-vs-batchnorm) and are not paired."""
    from itertools import combinations

    setups = {arm: arm_setup(s) for arm, s in arms.items()}
    groups: dict[tuple, list[str]] = {}
    for arm in arms:  # train_arm names a run <arm>-s<seed>
        seed = arm.rsplit("-s", 1)[1] if "-s" in arm else ""
        groups.setdefault((seed, setups[arm]["task"]), []).append(arm)
    return {(a, b): setup_differences(setups[a], setups[b])
            for members in groups.values() for a, b in combinations(sorted(members), 2)}


def declared(field_: str, variables: Sequence[str]) -> bool:
    """Whether ``field_`` is one of ``variables`` or lies below one (``data`` covers ``data.lag``)."""
    return any(field_ == v or field_.startswith(v + ".") for v in variables)


def undeclared_differences(variables: Sequence[str], arms: dict) -> list[str]:
    """'a vs b: field, ...' for every pair of arms (:func:`arm_differences`) that differ in a field
    not among ``variables``: arms must differ only in what the experiment studies (issue 21, point 4)."""
    out = []
    for (a, b), fields in arm_differences(arms).items():
        extra = [f for f in fields if not declared(f, variables)]
        if extra:
            out.append(f"{a} vs {b}: {', '.join(extra)}")
    return out

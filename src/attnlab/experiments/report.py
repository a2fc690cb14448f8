"""EXPERIMENTS.md, rebuilt from the stored results (``attnlab experiment report [--check]``).

The page opens with one table (experiment, the paper's figure, ours as mean ± 95% interval over
seeds, the verdict its rule computes), then one section per experiment in the order of the story:
the question, the anchor, the rule stated before the run and its history, the stored run's command
and conditions, its table and figures, the verdict and the reading notes. Everything comes from

- the experiments themselves (question, anchor, rule, history: :mod:`attnlab.experiments`);
- ``docs/experiments/NAME/results.json`` (a full-budget run, copied without its run directories):
  the command, seeds, table, figures and every per-seed number the rule reads;
- the hand-written text beside them: ``docs/experiments/intro.md`` (after the table),
  ``NAME/runs.md`` (how the stored run was made) and ``NAME/notes.md`` (reading notes).

A stored run made before its experiment had a rule, or under an older rule, is labelled so; its
verdict is still computed by the current rule from the stored per-seed numbers, where they exist.
A stored run under a rule that is neither the current one nor in the history is refused: a rule
changed after a run must keep the old one (:class:`~attnlab.experiments.rules.RuleChange`).
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

from attnlab.errors import ConfigError
from attnlab.experiments.base import Experiment
from attnlab.experiments.rules import (
    Decision,
    decide,
    decision_line,
    decision_markdown,
    fingerprint,
    history_markdown,
    interval_summary,
    rule_markdown,
)

PAGE = "EXPERIMENTS.md"
DOCS = Path("docs") / "experiments"
HEADER = ("# Experiments\n\n<!-- Written by `attnlab experiment report` from docs/experiments/ (results.json, intro.md, "
          "runs.md, notes.md) and the rules in src/attnlab/experiments/: edit those, then rerun it. -->\n")


def source_root() -> Path:
    """The source checkout this attnlab runs from (EXPERIMENTS.md and docs/experiments/ beside src/)."""
    import attnlab

    root = Path(attnlab.__file__).resolve().parents[2]
    if not (root / DOCS).is_dir():
        raise ConfigError(f"no {DOCS} under {root}: 'attnlab experiment report' works in a source checkout of attnlab")
    return root


def _text(path: Path) -> str:
    return path.read_text().strip() if path.exists() else ""


def stored_results(root: Path, name: str) -> dict | None:
    p = root / DOCS / name / "results.json"
    return json.loads(p.read_text()) if p.exists() else None


def run_rule(exp: Experiment, res: dict) -> str | None:
    """The fingerprint of the rule the stored run was decided by (None: before it had one); a
    fingerprint that is neither the current rule's nor in the history is refused."""
    fp = (res.get("rule") or {}).get("fingerprint")
    known = {fingerprint(exp.rule)} | {h.fingerprint for h in exp.history}
    if fp is not None and fp not in known:
        raise ConfigError(f"{DOCS / exp.name / 'results.json'} was decided by rule {fp}, which is neither the current "
                          f"rule of {exp.name} nor in its history: a rule changed after a run needs a RuleChange with "
                          "the old rule and verdict")
    return fp


def _decision(exp: Experiment, res: dict) -> Decision:
    """The current rule's decision on the stored per-seed numbers; a run under the current rule must
    have stored the same verdict."""
    decision = decide(exp.rule, res["data"])
    stored = res.get("decision") or {}
    if run_rule(exp, res) == fingerprint(exp.rule) and stored.get("verdict") != decision.verdict:
        raise ConfigError(f"{DOCS / exp.name / 'results.json'} stored the verdict {stored.get('verdict')!r} under the "
                          f"current rule, which now computes {decision.verdict!r}: rerun the experiment")
    return decision


def _predates(exp: Experiment, res: dict) -> str:
    """'' for a run under the current rule, otherwise what it ran under."""
    fp = run_rule(exp, res)
    if fp == fingerprint(exp.rule):
        return ""
    return f"ran under the older rule `{fp}` (see the history)" if fp else "predates the rule"


def summary_row(exp: Experiment, res: dict | None) -> str:
    link = f"[`{exp.name}`](#{exp.name})"
    if res is None:
        return f"| `{exp.name}` | {exp.anchor.split(':')[0]} | — | — | not run at full budget |"
    seeds = len(res["seeds"])
    if exp.rule is None:
        return (f"| {link} | {exp.anchor.split(':')[0]} | — | {seeds} | no rule yet: the section's verdict is "
                "written by hand |")
    decision = _decision(exp, res)
    old = _predates(exp, res)
    return (f"| {link} | {exp.rule.figure} | {interval_summary(exp.rule, decision)} | {seeds} | "
            f"**{decision_line(decision)}**{f' (stored run {old})' if old else ''} |")


def summary(exps: dict[str, Experiment], stored: dict[str, dict | None]) -> str:
    lines = ["| experiment | the paper's figure | ours: mean ± 95% interval over seeds (first comparison) | seeds "
             "| verdict (from the rule) |", "|---|---|---|---|---|"]
    return "\n".join(lines + [summary_row(e, stored[n]) for n, e in exps.items()])


def run_line(res: dict) -> str:
    """When and how the stored run was made."""
    minutes = f"{res['wall_seconds'] / 60:.1f} min wall"
    if res.get("train_seconds") is not None:
        minutes += f", of which the training arms {res['train_seconds'] / 60:.1f} min over all sessions"
    threads = res["threads"]
    return (f"**Command** (run {res['started_utc']}: {minutes}; seeds {res['seeds']}; {threads} thread"
            f"{'s' if threads != 1 else ''}; load average (1, 5, 15 min) at start {res['load_average']['start']}):")


def arms_line(res: dict) -> str:
    """Parameters and optimizer steps of each arm (its seeds share them), from the stored summaries."""
    arms: dict[str, tuple] = {}
    for run, s in res.get("arms", {}).items():
        arms.setdefault(run.rsplit("-s", 1)[0], (s.get("parameters"), s.get("steps")))
    if not arms:
        return ""
    return "Arms: " + "; ".join(f"{a} {'—' if p is None else f'{p:,}'} parameters, {st} steps"
                                for a, (p, st) in arms.items()) + "."


def verdict_block(exp: Experiment, res: dict) -> list[str]:
    if exp.rule is None:
        return [f"**Verdict** (the experiment's own prose from its numbers, not yet computed by a rule). {res['verdict']}"]
    old = _predates(exp, res)
    if not old:
        return [res["verdict"]]
    decision = _decision(exp, res)
    return [f"The stored run {old}: the verdict below is the rule's, computed from the stored per-seed numbers "
            f"({len(res['seeds'])} seed(s)); a rerun with the default seeds replaces it.", "",
            decision_markdown(exp.rule, decision), "",
            f"**Stored reading** (written by the experiment when it ran, under the criterion this rule replaces; its "
            f"verdict words are not the rule's). {res['verdict']}"]


def section(root: Path, exp: Experiment, res: dict | None) -> str:
    d = root / DOCS / exp.name
    out = [f"## {exp.name}", "", f"**Question.** {exp.question}", "", f"**Anchor.** {exp.anchor}.", ""]
    out += [rule_markdown(exp.rule), ""] if exp.rule else \
        ["**Rule.** None yet: this experiment's verdict is still written by hand (issue 21).", ""]
    out += [history_markdown(exp.history), ""] if exp.history else []
    if res is None:
        return "\n".join(out + ["Not run at full budget yet.", ""])
    out += [run_line(res), "", "```bash", " ".join(res["command"] or []), "```", ""]
    out += [_text(d / "runs.md"), ""] if _text(d / "runs.md") else []
    out += [res["table_markdown"].strip(), ""]
    out += [f"![{stem}]({DOCS.as_posix()}/{exp.name}/{png})" for stem, png in res["figures"].items()] + [""]
    out += [arms_line(res), ""] if arms_line(res) else []
    out += verdict_block(exp, res) + [""]
    out += [f"**Reading notes.** {_text(d / 'notes.md')}", ""] if _text(d / "notes.md") else []
    out += [f"To rerun with the default seeds ({exp.seeds['full']}): `attnlab experiment {exp.name} --budget full "
            f"--threads 1 -o /tmp/full/{exp.name}`.", ""]
    return "\n".join(out)


def build_page(root: Path) -> str:
    """EXPERIMENTS.md as the stored results and the experiments' rules make it."""
    from attnlab.experiments import experiments

    exps = experiments()
    stored = {n: stored_results(root, n) for n in exps}
    parts = [HEADER, summary(exps, stored), "", _text(root / DOCS / "intro.md"), ""]
    parts += [section(root, e, stored[n]) for n, e in exps.items()]
    return "\n".join(parts).rstrip() + "\n"


def page_diff(root: Path) -> str:
    """How EXPERIMENTS.md differs from the page the stored results make ('' when it does not)."""
    page = root / PAGE
    have = page.read_text() if page.exists() else ""
    return "".join(difflib.unified_diff(have.splitlines(True), build_page(root).splitlines(True),
                                        f"{PAGE} (on disk)", f"{PAGE} (from the stored results)", n=1))


def write_page(root: Path) -> Path:
    from attnlab.io import atomic_write_text

    atomic_write_text(root / PAGE, build_page(root))
    return root / PAGE

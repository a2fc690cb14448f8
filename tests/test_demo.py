"""``attnlab demo`` (shortened): trains, evaluates and writes the illustrated report."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from attnlab.cli.main import main


def test_short_demo_writes_the_report(tmp_path):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["demo", "--epochs", "2", "--run-dir", str(tmp_path / "demo"), "--quiet"])
    assert code == 0
    d = tmp_path / "demo"
    for f in ("report.md", "report.html", "curves.png", "confusion.png", "posembed.png", "attention.png",
              "attention_heads.png", "metrics.csv", "metrics.json", "best.json", "last.json"):
        assert (d / f).is_file(), f
    md = (d / "report.md").read_text()
    assert "](explore.html)" in md and (d / "explore.html").read_text().startswith("<!")
    for img in ("curves.png", "confusion.png", "posembed.png", "attention.png"):
        assert f"]({img})" in md
    link = md.split("[EXPERIMENTS.md](")[1].split(")")[0]  # relative to the report, to this checkout's file
    assert (d / link).resolve() == (Path(__file__).resolve().parents[1] / "EXPERIMENTS.md")
    from attnlab.experiments import experiments

    assert all(f"attnlab experiment {name}" in md for name in experiments())
    html = (d / "report.html").read_text()
    assert html.startswith("<!doctype html>") and 'src="posembed.png"' in html
    lines = out.getvalue().strip().splitlines()
    assert lines[-2].startswith("test accuracy:") and lines[-1].startswith("report:") and "report.html" in lines[-1]


def test_demo_refuses_an_existing_run_dir(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("keep")
    assert main(["demo", "--run-dir", str(tmp_path / "d")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "d" / "notes.txt").read_text() == "keep"


def test_demo_banner_counts_are_the_runs_and_the_best_epoch_is_chosen_on_validation(tmp_path):
    """The banner said 1,437 / 360 images where the run had 1,438 / 359, and the demo picked its
    best checkpoint on the test split it then called held out."""
    import json
    import re

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["demo", "--epochs", "1", "--run-dir", str(tmp_path / "d")]) == 0
    text = " ".join(out.getvalue().split())
    rec = json.loads((tmp_path / "d" / "best.json").read_text())
    ds = rec["dataset"]
    m = re.search(r"([\d,]+) training, ([\d,]+) validation .* and ([\d,]+) test images", text)
    assert m, text[:400]
    got = [int(g.replace(",", "")) for g in m.groups()]
    assert got == [ds["train_size"], ds["val_size"], ds["test_size"]]
    assert ds["val_source"] != "test split" and ds["train_size"] + ds["val_size"] + ds["test_size"] == 1797
    assert f"/{ds['test_size']} test digits" in text

"""``attnlab demo`` (shortened): trains, evaluates and writes the illustrated report."""

from __future__ import annotations

import contextlib
import io

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
    for img in ("curves.png", "confusion.png", "posembed.png", "attention.png"):
        assert f"]({img})" in md
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

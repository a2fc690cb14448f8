"""``attnlab experiment -o DIR`` never replaces a user's files: DIR must be new, empty or written
by the same experiment (its marker says so); anything else is refused in one line with nothing
changed, ``--overwrite`` removes only what the experiment wrote, and a moved folder still reuses
its arms."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from attnlab.experiments import run_experiment
from attnlab.experiments.base import Experiment, Result
from attnlab.experiments.outputs import MARKER
from conftest import data_dir
from test_cli_image import assert_one_line_error, cli, snapshot


@pytest.fixture(scope="module")
def sqrt_dk(tmp_path_factory) -> Path:
    """The output folder of ``attnlab experiment sqrt-dk`` at quick budget (tests that change it copy it)."""
    if not data_dir().is_dir():
        pytest.skip(f"shared data not found at {data_dir()} (set ATTNLAB_DATA to its path)")
    out = tmp_path_factory.mktemp("experiment") / "sqrt-dk"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATTNLAB_DATA", str(data_dir()))
        code, _, err = cli("experiment", "sqrt-dk", "--quiet", "-o", out)
    assert code == 0, err
    return out


@pytest.fixture
def copy_of(sqrt_dk, tmp_path, monkeypatch):
    """A copy of the sqrt-dk folder in a new place (a moved folder), with the shared data found."""
    monkeypatch.setenv("ATTNLAB_DATA", str(data_dir()))
    return lambda name: Path(shutil.copytree(sqrt_dk, tmp_path / name))


def user_folder(t: Path) -> Path:
    (t / "notes").mkdir()
    (t / "notes" / "README.md").write_text("my notes\n")
    return t / "notes"


def read_only_folder(t: Path) -> Path:
    (t / "ro").mkdir()
    (t / "ro").chmod(0o555)
    return t / "ro"


AS_ROOT = pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only directories")

# case -> (the arguments of 'attnlab experiment attention-cost' (the cheapest) from (tmp_path, the
# sqrt-dk folder), what its one line says)
BAD = {
    "a user's folder": (lambda t, d: ["-o", user_folder(t)],
                        r"notes is not empty and was not written by experiment attention-cost .*pass a new or empty -o$"),
    "a user's folder, --overwrite": (lambda t, d: ["-o", user_folder(t), "--overwrite"],
                                     "--overwrite replaces only what the experiment itself wrote"),
    "-o .": (lambda t, d: ["-o", "."], r"^attnlab: error: \. is not empty"),
    "-o ''": (lambda t, d: ["-o", ""], "-o '' names no directory"),
    "a file": (lambda t, d: ["-o", user_folder(t) / "README.md"], "exists and is not a directory"),
    "a read-only folder": (lambda t, d: ["-o", read_only_folder(t)], "permission denied"),
    "another experiment's folder": (lambda t, d: ["-o", d],
                                    "holds the outputs of experiment sqrt-dk, not attention-cost; pass another -o"),
    "another experiment's folder, --overwrite": (lambda t, d: ["-o", d, "--overwrite"],
                                                 "holds the outputs of experiment sqrt-dk, not attention-cost"),
}


@pytest.mark.parametrize("case", [pytest.param(c, marks=AS_ROOT) if "read-only" in c else c for c in BAD])
def test_bad_output_folder_is_refused_and_nothing_changes(case, sqrt_dk, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "README.md").write_text("the project's README\n")  # what '-o .' used to replace
    make_args, pattern = BAD[case]
    args = make_args(tmp_path, sqrt_dk)
    before = snapshot(tmp_path), sorted(tmp_path.rglob("*")), snapshot(sqrt_dk)
    assert_one_line_error(*cli("experiment", "attention-cost", *args, "--quiet"), pattern)
    assert (snapshot(tmp_path), sorted(tmp_path.rglob("*")), snapshot(sqrt_dk)) == before


def test_a_rerun_into_its_moved_folder_reuses_the_arms(copy_of):
    moved = copy_of("moved")
    (moved / "notes.txt").write_text("mine\n")  # a user's file beside the outputs
    runs = snapshot(moved / "runs")
    code, out, err = cli("experiment", "sqrt-dk", "--quiet", "-o", moved)
    assert code == 0, err
    assert snapshot(moved / "runs") == runs  # nothing retrained: the arms were reused
    assert (moved / "notes.txt").read_text() == "mine\n"
    assert json.loads((moved / "results.json").read_text())["results_dir"] == str(moved)


def test_overwrite_replaces_only_what_the_experiment_wrote(copy_of):
    d = copy_of("d")
    (d / "notes.txt").write_text("mine\n")
    (d / "runs" / "mine.txt").write_text("mine too\n")
    sliced = d / "data" / "tinyshakespeare-20000.txt"
    true_slice = sliced.read_text()
    sliced.write_text(true_slice.upper())  # the data the arms were trained on changed
    assert_one_line_error(*cli("experiment", "sqrt-dk", "--quiet", "-o", d),
                          r"lm-scaled-s0 was trained with other settings \(text\);.* or --overwrite")
    code, _, err = cli("experiment", "sqrt-dk", "--quiet", "-o", d, "--overwrite")
    assert code == 0, err
    assert (d / "notes.txt").read_text() == "mine\n" and (d / "runs" / "mine.txt").read_text() == "mine too\n"
    assert sliced.read_text() == true_slice  # made afresh, and the arms trained on it
    wrote = json.loads((d / MARKER).read_text())["wrote"]
    assert {"results.json", "README.md", "runs/lm-scaled-s0", "data/tinyshakespeare-20000.txt"} <= set(wrote)
    assert "notes.txt" not in wrote and "runs/mine.txt" not in wrote


def killed(ctx):
    ctx.derived_file("part.txt", lambda: "half of the work\n")
    raise KeyboardInterrupt


def test_the_marker_is_written_first_so_a_killed_experiment_continues(tmp_path):
    out = tmp_path / "out"
    exp = Experiment("killed", "q", "a", {"quick": "", "full": ""}, {"quick": 1, "full": 1}, killed)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(exp, out=out, progress=False)
    marker = json.loads((out / MARKER).read_text())
    assert marker["experiment"] == "killed" and marker["wrote"] == ["data/part.txt"]
    done = Experiment("killed", "q", "a", {"quick": "", "full": ""}, {"quick": 1, "full": 1},
                      lambda ctx: Result([{"arm": "a"}], "verdict"))
    assert run_experiment(done, out=out, progress=False)["verdict"] == "verdict"
    assert (out / "data" / "part.txt").is_file()  # continued: what the killed run wrote is kept
    run_experiment(done, out=out, progress=False, overwrite=True)
    assert not (out / "data").exists() and (out / "results.json").is_file()
    # a run killed while writing its very first marker leaves only the marker's temporary file
    first = tmp_path / "first"
    first.mkdir()
    (first / f".{MARKER}.0123456789abcdef.tmp").write_text("{")
    assert run_experiment(done, out=first, progress=False)["experiment"] == "killed"


def test_a_log_axis_ticks_the_values_measured():
    """A rate grid of 1e-3, 2e-3, 4e-3 on a log axis reads 0.001 / 0.002 / 0.004, not 2^-10 / 2^-9 / 2^-8."""
    from attnlab.experiments.figures import line_figure

    fig = line_figure({"LN": ([1e-3, 2e-3, 4e-3], [3.0, 2.0, 2.5]), "BN": ([1e-3, 4e-3], [4.0, 3.0])}, "rate", "ppl",
                      "grid", logx=True)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0.001", "0.002", "0.004"]

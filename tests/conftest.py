import contextlib
import io
import os
from pathlib import Path

import pytest
import torch

# Under pytest-xdist (`make test` runs two workers, PYTEST_JOBS) each worker computes on one thread;
# run alone, the suite uses up to two.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, torch.get_num_threads())))


# The heavy groups, marked `slow` here in one place besides the tests that carry
# @pytest.mark.slow themselves: each over ~20 s in `make test`'s --durations on the 2-core
# machine, or a group of subprocess kills, two-process trainings, a browser, or experiments at
# quick budget. `pytest -m "not slow"` leaves them out. An entry is a test file or file::test
# (every parametrisation of it).
SLOW = (
    "test_train_resume.py::test_sigkill_mid_epoch_then_resume_matches_uninterrupted",
    "test_train_resume.py::test_killing_at_any_moment_leaves_a_loadable_checkpoint",
    "test_export_safety.py::test_killed_export_leaves_the_previous_set_whole_and_the_next_export_cleans_up",
    "test_export_safety.py::test_loader_refuses_a_torn_set",
    "test_train_ddp.py",
    "test_explore_browser.py",
    "test_experiments.py::test_quick_budget_writes_results",
    "test_experiments.py::test_every_run_an_experiment_writes_reopens",
    "test_experiments.py::test_arms_differ_only_in_the_declared_variables",
    "test_experiments.py::test_a_planted_difference_is_caught",
    "test_bench.py::test_deploy_bench_vit_rows_per_int8_backend",
    "test_int8.py::test_compiled_int8_decoding_gives_eager_int8_tokens",
)


@pytest.hookimpl(tryfirst=True)  # before -k and -m deselect: every test of a collected file is seen
def pytest_collection_modifyitems(items):
    matched, files = set(), {item.path.name for item in items}
    for item in items:
        name = f"{item.path.name}::{getattr(item, 'originalname', item.name)}"
        for key in (item.path.name, name):
            if key in SLOW:
                matched.add(key)
                item.add_marker(pytest.mark.slow)
    stale = [s for s in SLOW if s.split("::")[0] in files and s not in matched]
    if stale:  # a renamed test would silently stop being marked slow
        raise pytest.UsageError(f"tests/conftest.py SLOW names tests that do not exist: {', '.join(stale)}")


@pytest.fixture(scope="session", autouse=True)
def _own_cache(tmp_path_factory):
    """Per-machine measurements (the int8 backend choice) go to a folder of this test session,
    never to the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("ATTNLAB_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    mp.delenv("ATTNLAB_INT8_BACKEND", raising=False)
    yield
    mp.undo()


def data_dir() -> Path:
    return Path(os.environ.get("ATTNLAB_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data")).resolve()


@pytest.fixture
def shared_data() -> Path:
    d = data_dir()
    if not d.is_dir():
        pytest.skip(f"shared data not found at {d} (set ATTNLAB_DATA to its path)")
    return d


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy machine two threads wait on
    each other; the setting is restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------ tiny trained runs, shared
# Trained once per test session, when a test first asks, in the session's temporary folder. The
# paths are to read: a test that changes a run (exports into it, resumes it) copies it first.
TINY_IMAGE = ["--model", "vit_digits", "--model-arg", "embed_dim=16", "--model-arg", "depth=1", "--model-arg",
              "num_heads=2", "--batch-size", "128", "--lr", "3e-3", "--threads", "1", "--quiet"]


def _train(argv: list[str]) -> None:
    from attnlab.cli.main import main

    n = torch.get_num_threads()
    try:
        assert main(argv) == 0, argv
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_image_run(tmp_path_factory) -> Path:
    """A vit_digits run of TINY_IMAGE for two epochs (a best and a last checkpoint)."""
    d = tmp_path_factory.mktemp("tiny_image") / "run"
    _train(["train", "image", *TINY_IMAGE, "--epochs", "2", "--run-dir", str(d)])
    return d


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """``tiny_run(task)``: the run directory of the one-epoch run of ``task`` ("image", "lm" or
    "translate") that test_runs.train_args describes."""
    from test_runs import train_args

    made: dict[str, Path] = {}

    def get(task: str) -> Path:
        if task not in made:
            tmp = tmp_path_factory.mktemp(f"tiny_{task}")
            _train(train_args(task, tmp) + ["--run-dir", str(tmp / "run")])
            made[task] = tmp / "run"
        return made[task]

    return get


def cli(*argv) -> tuple[int, str, str]:
    """``attnlab ARGV`` in this process: (exit code, stdout, stderr)."""
    from attnlab.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()

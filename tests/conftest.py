import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


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

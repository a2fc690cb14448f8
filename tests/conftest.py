import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


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

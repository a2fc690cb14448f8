"""attnlab.io: atomic writes leave the old file or the new one, and written files get the usual
permissions (0666 minus the umask), not the 0600 of a temporary file."""

import os
import sys

import pytest
import torch

from attnlab.io import atomic_write, atomic_write_bytes, atomic_write_json, save_safetensors_atomic

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")


@pytest.fixture
def umask():
    """Set the process umask for one test, restore it afterwards."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def _mode(p) -> int:
    return os.stat(p).st_mode & 0o777


def test_written_files_get_the_usual_permissions(tmp_path, umask):
    umask(0o022)
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    atomic_write_json(tmp_path / "sub" / "b.json", {"k": 1})
    save_safetensors_atomic({"w": torch.zeros(2)}, tmp_path / "c.safetensors")
    for name in ("a.bin", "sub/b.json", "c.safetensors"):
        assert _mode(tmp_path / name) == 0o644, name
    umask(0o077)
    atomic_write_bytes(tmp_path / "a.bin", b"y")  # replacing a file gives the new file the umask's mode
    assert _mode(tmp_path / "a.bin") == 0o600 and (tmp_path / "a.bin").read_bytes() == b"y"


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "keep.json"
    atomic_write_json(target, {"good": True})
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as f:
            f.write("half")
            raise RuntimeError("crash")
    assert target.read_text() == '{\n  "good": true\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["keep.json"]

"""torchvision is optional (the demo's small CPU build of torch has none): without it every command
still starts, the models that need it are left out of the registry with a note, and VOC data, tiling
and RetinaNet are refused in one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from test_export import WITHOUT_TORCHVISION


def attnlab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_TORCHVISION, *args], capture_output=True, text=True, timeout=300)


def test_commands_start_and_the_models_without_torchvision_are_listed():
    done = attnlab("models")
    assert done.returncode == 0 and "vit_tiny_patch16_224" in done.stdout and "retinanet" not in done.stdout
    assert attnlab("train", "detect", "--help").returncode == 0


@pytest.mark.parametrize("args, message", [
    (["train", "detect", "--model", "retinanet_small"], "need torchvision, not installed here"),
    (["train", "detect", "--dataset", "voc:{data}/neon-trees/2019_YELL_2_528000_4978000_image_crop2.xml"],
     "need torchvision"),
])
def test_what_needs_torchvision_says_so_in_one_line(tmp_path, shared_data, args, message):
    done = attnlab(*[a.format(data=shared_data) for a in args], "--run-dir", str(tmp_path / "run"))
    err = done.stderr.strip()
    assert done.returncode == 2 and message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()

"""Every ```python block of README.md runs, so the README cannot rot."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_examples():
    assert BLOCKS, "README.md lost its Python quick-start"


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_block_runs(i, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(BLOCKS[i], f"README.md[python block {i}]", "exec"), {"__name__": "__readme__"})


COMMANDS = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)


@pytest.mark.slow
def test_readme_command_tour_runs_as_written(tmp_path, shared_data):
    """The README's command tour, then its deployment commands on the tour's runs, line by line, in
    a fresh directory beside the data (the same relative path ../shared/data), with digit.png
    drawn here. Each command must exit 0."""
    import json
    import os
    import subprocess
    import sys

    from PIL import Image

    tour = next(b for b in COMMANDS if "attnlab demo" in b and "attnlab train" in b)
    deploy = next(b for b in COMMANDS if "attnlab export" in b)  # on the tour's runs
    lines = [ln.split("  #")[0].strip() for b in (tour, deploy) for ln in b.splitlines()
             if ln.strip() and not ln.startswith("#")]
    lines = [ln for ln in lines if not ln.startswith("attnlab demo")]  # the demo has tests of its own
    work = tmp_path / "repo"
    work.mkdir()
    (tmp_path / "shared").mkdir()
    os.symlink(shared_data, tmp_path / "shared" / "data")
    Image.new("L", (8, 8), 90).save(work / "digit.png")
    bin_dir = os.path.dirname(sys.executable)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"], "ATTNLAB_DATA": str(shared_data)}
    for line in lines:
        p = subprocess.run(line, shell=True, cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, (line, p.stderr[-2000:])
        assert "Traceback" not in p.stderr, (line, p.stderr[-2000:])
    assert (work / "alignment.png").read_bytes()[:4] == b"\x89PNG"
    assert (work / "runs" / "digits" / "export" / "vit_digits.onnx").is_file() and (work / "mt.decoder.onnx").is_file()
    assert json.loads((work / "runs" / "digits" / "last.json").read_text())["epoch"] == 4  # the resumed run went on


def test_readme_cifar_block_runs(tmp_path):
    """The README's small-data block: ``predict`` with the shipped weights runs as written; the recipe
    and its table run as written with a toy size appended (one epoch on 130 CIFAR-10 images, results in
    tmp_path: argparse keeps an option's last value), so a renamed recipe or option fails here."""
    import os
    import subprocess
    import sys

    from PIL import Image

    from test_compact_cli import cifar_folder

    block = next(b for b in COMMANDS if "cifar10-cct" in b)
    lines = [ln.split("  #")[0].strip() for ln in block.splitlines() if ln.strip() and not ln.startswith("#")]
    assert any(ln.startswith("attnlab predict") for ln in lines) and any("ablation" in ln for ln in lines)
    data = cifar_folder(tmp_path / "cifar", per_class=13, test_per_class=1)
    repo = README.parent
    Image.new("RGB", (40, 30), (200, 60, 40)).save(tmp_path / "photo.jpg")
    for line in lines:
        if line.startswith("python bench/"):
            line = f"{line} --epochs 1 --dataset folder:{data} --out {tmp_path / 'runs'} --threads 1"
        line = line.replace("python ", f"{sys.executable} ", 1).replace("photo.jpg", str(tmp_path / "photo.jpg"))
        env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
        p = subprocess.run(line, shell=True, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0 and "Traceback" not in p.stderr, (line, p.stderr[-2000:])
        if line.startswith("attnlab predict"):
            assert "random init" not in p.stdout + p.stderr

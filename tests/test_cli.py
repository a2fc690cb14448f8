import subprocess
import sys

import attnlab
from attnlab.cli.main import main


def test_version_and_help(capsys):
    for argv in (["--version"], ["--help"]):
        try:
            main(argv)
        except SystemExit as e:
            assert e.code == 0
    out = capsys.readouterr().out
    assert f"attnlab {attnlab.__version__}" in out and "usage: attnlab" in out


def test_entry_point_runs_as_module():
    r = subprocess.run([sys.executable, "-m", "attnlab", "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == f"attnlab {attnlab.__version__}"


def test_unknown_command_exits_nonzero():
    r = subprocess.run([sys.executable, "-m", "attnlab", "frobnicate"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr

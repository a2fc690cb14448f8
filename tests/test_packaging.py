"""pyproject.toml as setuptools reads it: no deprecation warning on install (the ``license``
table form warned every time), and a build backend that understands what the file says."""

import warnings
from pathlib import Path

import pytest

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_setuptools_reads_pyproject_without_warnings():
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} predates SPDX license strings (the build pins >=77)")
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), PYPROJECT)
    assert [str(w.message).splitlines()[0] for w in caught] == []
    assert dist.metadata.license_expression == "MIT"


def test_build_backend_is_pinned_to_versions_that_read_spdx_licenses():
    """setuptools 76 refuses ``license = "MIT"``; 77.0.3, 81.0.0 and 84.2.1 were tried (pip install -e
    in a clean venv, no warning)."""
    tomllib = pytest.importorskip("tomllib")
    requirements = pytest.importorskip("packaging.requirements")
    requires = tomllib.loads(PYPROJECT.read_text())["build-system"]["requires"]
    (spec,) = [requirements.Requirement(r).specifier for r in requires if r.startswith("setuptools")]
    assert not spec.contains("76.1.0")
    assert all(spec.contains(v) for v in ("77.0.3", "81.0.0", "84.2.1"))

"""mypy on the code that calls TensorRT, against the pinned tensorrt-stubs (TensorRT cannot run here)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def mypy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mypy", *args], cwd=ROOT, capture_output=True, text=True)


def test_tensorrt_code_typechecks_against_the_stubs():
    done = mypy()  # the files and settings of [tool.mypy] in pyproject.toml
    assert done.returncode == 0 and "Success" in done.stdout, done.stdout + done.stderr


def test_the_stubs_are_really_consulted(tmp_path):
    """A wrong call to TensorRT's API is caught: the stubs are on mypy's path, not silently Any."""
    probe = tmp_path / "probe.py"
    probe.write_text("import tensorrt as trt\n"
                     "builder = trt.Builder(trt.Logger(trt.Logger.WARNING))\n"
                     "builder.create_network(flags='strongly typed')\n"
                     "profile = builder.create_optimization_profile()\n"
                     "profile.set_shape('input_ids', (1, 64), (8, 64), (64, 64))\n")
    done = mypy(str(probe))
    assert done.returncode == 1, done.stdout
    assert 'Argument "flags" to "create_network"' in done.stdout and '"set_shape"' in done.stdout, done.stdout


def test_the_stubs_stay_out_of_site_packages():
    """tensorrt-stubs ships a bare ``tensorrt`` directory; in site-packages it would make ``import
    tensorrt`` succeed with an empty namespace and the TensorRT tests would stop skipping."""
    spec = importlib.util.find_spec("tensorrt")
    assert spec is None or spec.origin is not None, "a namespace 'tensorrt' (the stubs) is importable"

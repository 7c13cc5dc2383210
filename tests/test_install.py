"""A non-editable install assembles a repository: the templates ship as package data.

The build tools are installed the way a wheel installs them (pip, into a folder of their own, from
copies of the sources, without network: --no-deps --no-build-isolation), then run with that folder
first on the path and the checkout out of reach (another working directory). The repository they
assemble must match one assembled from the checkout, file for file.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "build_scripts", "loadtests", "model_repository", "contract")

pytestmark = pytest.mark.slow

ASSEMBLE = """
import json, sys
from pathlib import Path
import rerank_build.repository as r
import rerank_contract
from rerank_build.repository import RepositorySettings, build_repository
out = build_repository(sys.argv[1], Path(sys.argv[2]), RepositorySettings())
print(json.dumps({"templates": str(r.TEMPLATES), "contract": rerank_contract.__file__, "out": str(out)}))
"""


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".rerank-repository.json" and "__pycache__" not in p.parts}


@pytest.mark.timeout(600)
def test_a_wheel_install_assembles_the_same_repository(tmp_path, tiny_checkpoint):
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy2)(
            ROOT / name, src / name, **({"ignore": shutil.ignore_patterns("build", "*.egg-info", "__pycache__")}
                                         if (ROOT / name).is_dir() else {}))
    target = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--no-index", "--target", str(target), str(src / "contract"), str(src)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (target / "rerank_build" / "templates" / "tokenizer" / "1" / "model.py").is_file(), "templates as data"
    assert not list(target.glob("__editable__*")), "a real install, not an editable one"

    work = tmp_path / "work"  # another working directory: the build cache goes there, not to the checkout
    work.mkdir()
    env = {"PYTHONPATH": str(target), "PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", ASSEMBLE, str(tiny_checkpoint), str(work / "repo")],
                          capture_output=True, text=True, timeout=500, cwd=work, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    where = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(where["templates"]).is_relative_to(target) and Path(where["contract"]).is_relative_to(target)
    assert list((work / "build" / "cache" / "onnx").glob("*/model.onnx")), "the export went to the cache"

    from rerank_build.repository import RepositorySettings, build_repository

    checkout = build_repository(tiny_checkpoint, tmp_path / "from-checkout", RepositorySettings())
    installed, ours = _files(work / "repo"), _files(checkout)
    assert installed.keys() == ours.keys()
    # The ensemble publishes a digest of the served files (model_fingerprint), so it differs where the ONNX
    # exports differ (an export is not byte-for-byte reproducible); the rest of its config may not.
    for files in (installed, ours):
        for name in [n for n in files if n.endswith("config.pbtxt")]:
            files[name] = re.sub(rb'("model_fingerprint" value: \{ string_value: ")[0-9a-f]+', rb"\1", files[name])
    differ = [name for name in ours if installed[name] != ours[name] and not name.endswith(("model.onnx",
                                                                                          "export_meta.json"))]
    assert not differ, differ

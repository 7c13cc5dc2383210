"""Each image installs what it runs, checked without Docker (which cannot run here).

Read statically: the Dockerfiles' pip lines, the python models' imports (and the contract package
copied beside them), the engine each deployment assembles. Resolved for real: the serving image's
pip install, by pip, for the image's Python and platform, against requirements.lock (so the wheels
exist there and every version is the lock's). Not checked: that NVIDIA's base image lets pip install
into its Python, which only building the image shows.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys

import yaml

from imports import ROOT, distributions, imported_modules, lock, normalize
from rerank_build.cpu_runtime import RUNTIMES
from rerank_build.repository import CPU_ENGINES, RepositorySettings

#: NVIDIA's Triton 25.06 container (docker/Dockerfile.triton): Ubuntu 24.04 with Python 3.12, glibc 2.39.
IMAGE_PYTHON = "3.12"
IMAGE_PLATFORMS = ["manylinux2014_x86_64"] + [f"manylinux_2_{v}_x86_64" for v in range(17, 40)]


def pip_installs(dockerfile: str) -> list[tuple[list[str], list[str], str]]:
    """(constraints files, requirements named, the RUN line) of each pip install in the Dockerfile, in order;
    a RUN line may chain several with &&."""
    text = (ROOT / "docker" / dockerfile).read_text().replace("\\\n", " ")
    found = []
    for line in (line for line in text.splitlines() if line.startswith("RUN") and "pip install" in line):
        for command in (c for c in line.split("&&") if "pip install" in c):
            words = shlex.split(command.split("pip install", 1)[1])
            constraints, packages = [], []
            while words:
                word = words.pop(0)
                if word in ("-c", "-r"):
                    (constraints if word == "-c" else packages).append(f"{'' if word == '-c' else '-r '}{words.pop(0)}")
                elif word in ("--index-url", "--extra-index-url"):
                    words.pop(0)
                elif not word.startswith("-"):
                    packages.append(word)
            found.append((constraints, packages, line))
    return found


def model_imports() -> set[str]:
    """Distributions the python models import, the contract package copied into them included."""
    modules = imported_modules([ROOT / "model_repository", ROOT / "contract" / "rerank_contract"])
    return {dist for module in modules for dist in distributions(module)}


def serving_image() -> list[str]:
    """What the serving image installs from the lock (the second pip install is our own serving package)."""
    (constraints, packages, _), ours = pip_installs("Dockerfile.triton")
    assert ours[1] == ["/tmp/rerank/contract", "/tmp/rerank/serving"] and "--no-deps" in ours[2], ours
    text = (ROOT / "docker" / "Dockerfile.triton").read_text()
    assert constraints == ["/tmp/requirements.lock"] and "COPY requirements.lock /tmp/requirements.lock" in text
    assert not [p for p in packages if re.search(r"[=<>~]", p)], f"versions come from the lock: {packages}"
    return [normalize(p) for p in packages]


def test_serving_image_installs_what_every_model_imports():
    packages = serving_image()
    assert model_imports() <= set(packages), f"the models import {sorted(model_imports() - set(packages))}"
    assert set(packages) <= set(lock()), "every package the image installs is pinned in the lock"


def test_the_images_supervisor_needs_only_the_standard_library_and_the_contract():
    """NVIDIA's container gets rerank_serving with --no-deps: importing the supervisor (which builds the
    command line with rerank_serving.server) must load nothing else (here: no site-packages at all)."""
    code = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]; import rerank_serving.supervise; "
            "print(sorted({m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names) - {'__main__'}))")
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(ROOT / "serving"), str(ROOT / "contract")],
                          capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(done.stdout.replace("'", '"')) == ["rerank_contract", "rerank_serving"], done.stdout


def test_serving_image_installs_every_cpu_engine_the_repository_offers():
    packages = serving_image()
    assert set(CPU_ENGINES) == set(RUNTIMES), "an engine is named for the runtime module it imports"
    for engine in CPU_ENGINES:
        assert normalize(engine) in packages, f"--cpu-engine {engine} would fail to load in the serving image"
    assert normalize(RepositorySettings().cpu_engine) in packages, "the default engine above all"


def test_the_cpu_overlay_serves_an_engine_its_image_installs():
    """deploy/k8s/overlays/cpu assembles the repository in an init container and serves it with the
    serving image: the engine it assembles (its --cpu-engine, else the default) must be installed there."""
    patch = yaml.safe_load((ROOT / "deploy/k8s/overlays/cpu/triton-cpu.yaml").read_text())["spec"]["template"]["spec"]
    script = " ".join(patch["initContainers"][0]["args"])
    (command,) = [c for c in script.split(";") if "rerank-build repository" in c]
    engine = re.search(r"--cpu-engine[= ](\w+)", command)
    chosen = engine.group(1) if engine else RepositorySettings().cpu_engine
    base = yaml.safe_load((ROOT / "deploy/k8s/base/triton-deployment.yaml").read_text())
    (triton,) = [c for c in base["spec"]["template"]["spec"]["containers"] if c["name"] == "triton"]
    assert triton["image"] == "rerankqa-triton", "served by the image docker/Dockerfile.triton builds"
    assert normalize(chosen) in serving_image()


def test_the_serving_images_install_resolves_from_the_lock_for_its_python(tmp_path):
    """pip resolves the serving image's install for Python 3.12 on manylinux x86_64 (wheels only, as the
    image would): every package it would install is the lock's version, dependencies included."""
    platforms = [arg for p in IMAGE_PLATFORMS for arg in ("--platform", p)]
    report = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                           "--only-binary=:all:", "--python-version", IMAGE_PYTHON, *platforms,
                           "--target", str(tmp_path / "target"), "--report", str(report),
                           "-c", str(ROOT / "requirements.lock"), *serving_image()],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    pins = lock()
    installed = {normalize(i["metadata"]["name"]): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}
    assert set(serving_image()) <= set(installed)
    unpinned = {name: version for name, version in installed.items() if pins.get(name) != version}
    assert not unpinned, f"installed at versions the lock does not pin: {unpinned}"


def test_the_build_image_installs_the_whole_lock():
    """The build image runs every rerank-build step (export, engine, repository, parity): the whole lock
    but the CPU tritonserver of nvidia-pytriton, which NVIDIA's container replaces."""
    (_, torch, _), (_, packages, line), (_, ours, _) = pip_installs("Dockerfile.build")
    assert torch == ["$(grep '^torch==' requirements.lock)"], "torch first, the lock's pin, from PyTorch's CPU index"
    assert "--index-url https://download.pytorch.org/whl/cpu" in line
    assert "grep -v '^nvidia-pytriton' requirements.lock > /tmp/requirements.txt" in line
    assert packages == ["-r /tmp/requirements.txt"], packages
    assert ours == ["contract", "client", "gateway", "serving", "."], "then this repository's packages, without dependencies"
    assert model_imports() <= set(lock())

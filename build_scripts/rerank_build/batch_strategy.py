"""Compile the GPU engine's batching strategy into the model directory, where Triton loads it.

``model_repository/engine_tensorrt/batchstrategy.c`` (what it does and why: its header) becomes
``<repository>/engine/batchstrategy.so``: Triton looks for a library of that name in the model's
version directory, then the model's directory, then the backend's. Built with the system C compiler
(``$CC``, else ``cc``) on the machine that assembles the repository, so assemble it on the serving
architecture (the build image and the Triton image share theirs). The library links nothing: the few
Triton functions it calls resolve from the server process that loads it.
"""

from __future__ import annotations

import importlib.resources
import os
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(str(importlib.resources.files("rerank_build.templates"))) / "engine_tensorrt" / "batchstrategy.c"
LIBRARY = "batchstrategy.so"


class BatchStrategyError(RuntimeError):
    """The strategy library cannot be built here."""


def compile_strategy(model_dir: str | Path, source: Path = SOURCE) -> Path:
    """Build ``model_dir/batchstrategy.so`` from ``source``; returns its path."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise BatchStrategyError("no C compiler (cc or $CC) to build the GPU engine's batching strategy: install "
                                 "gcc, or assemble the repository in the build image (docker/Dockerfile.build)")
    target = Path(model_dir) / LIBRARY
    partial = target.with_name(LIBRARY + ".partial")
    done = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(partial),
                           str(source)], capture_output=True, text=True)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise BatchStrategyError(f"{cc} could not build {source.name}: {done.stderr.strip()}")
    os.replace(partial, target)
    return target

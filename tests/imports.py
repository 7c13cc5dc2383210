"""What code imports and what packages declare: the static checks of test_dependencies and test_images."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path
from typing import Iterable

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
#: Modules that are not distributions to install: ours, and Triton's own module for python models.
OURS = {"rerank_contract", "rerank_client", "rerank_gateway", "rerank_serving", "rerank_build", "loadtests",
        "triton_python_backend_utils"}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_modules(paths: Iterable[Path]) -> dict[str, set[str]]:
    """Top-level modules imported anywhere in ``paths`` (lazily inside functions too), outside the
    standard library and this repository: {module: files importing it}."""
    local = {p.stem for path in paths for p in ([path] if path.is_file() else path.rglob("*.py"))}
    found: dict[str, set[str]] = {}
    for path in paths:
        for source in [path] if path.is_file() else sorted(path.rglob("*.py")):
            for node in ast.walk(ast.parse(source.read_text(), str(source))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in OURS and top not in local:
                        found.setdefault(top, set()).add(str(source.relative_to(ROOT)))
    return found


@cache
def _distributions() -> dict[str, list[str]]:
    return packages_distributions()


def distributions(module: str) -> set[str]:
    """The installed distributions providing ``module`` (normalized; a namespace package has several)."""
    names = _distributions().get(module)
    assert names, f"no installed distribution provides {module!r}"
    return {normalize(name) for name in names}


def project(folder: str) -> dict:
    return tomllib.loads((ROOT / folder / "pyproject.toml").read_text())["project"]


def requirements(folder: str, groups: bool = True) -> list[Requirement]:
    """Every requirement a pyproject declares: dependencies, every extra and (root) dependency group."""
    data = tomllib.loads((ROOT / folder / "pyproject.toml").read_text())
    meta = data["project"]
    texts = list(meta.get("dependencies", []))
    for extra in meta.get("optional-dependencies", {}).values():
        texts += extra
    if groups:
        for group in data.get("dependency-groups", {}).values():
            texts += [item for item in group if isinstance(item, str)]
    return [Requirement(text) for text in texts]


def lock() -> dict[str, str]:
    """requirements.lock as {normalized name: version}."""
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not an exact pin"
            pins[normalize(name)] = version
    return pins

"""The house's floors: no module-level import cycle, and each package imports only the floors below it.

contract (the ground floor) <- client <- gateway; serving and the build tools stand on the contract
(the build CLI reaches serving inside a function only); the load tests may use everything. Read
statically from the sources: imports at module level (``if TYPE_CHECKING`` blocks excluded), the ones
that run when a module is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"rerank_contract": ROOT / "contract" / "rerank_contract", "rerank_client": ROOT / "client" / "rerank_client",
            "rerank_gateway": ROOT / "gateway" / "rerank_gateway", "rerank_serving": ROOT / "serving" / "rerank_serving",
            "rerank_build": ROOT / "build_scripts" / "rerank_build", "loadtests": ROOT / "loadtests"}
#: package -> the packages of ours it may import at module level
ALLOWED = {"rerank_contract": set(), "rerank_client": {"rerank_contract"},
           "rerank_gateway": {"rerank_contract", "rerank_client"}, "rerank_serving": {"rerank_contract"},
           "rerank_build": {"rerank_contract", "rerank_client"},
           "loadtests": {"rerank_contract", "rerank_client", "rerank_gateway", "rerank_serving", "rerank_build"}}


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts))
            found[name.removesuffix(".__init__")] = path
    return found


def _top_level_imports(tree: ast.Module) -> list[ast.stmt]:
    out, todo = [], list(tree.body)
    while todo:
        node = todo.pop(0)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        elif isinstance(node, ast.If):
            if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                todo += node.body + node.orelse
        elif isinstance(node, ast.Try):
            todo += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in _top_level_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
            for candidate in candidates:
                while candidate and candidate not in known:
                    candidate = candidate.rpartition(".")[0]
                if candidate and candidate != name:
                    targets.add(candidate)
        edges[name] = targets
    return edges


def test_no_module_level_import_cycle():
    edges, state, cycles = graph(), {}, []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_each_package_imports_only_the_floors_below():
    wrong = [(module, target) for module, targets in graph().items() for target in targets
             if target.split(".")[0] != module.split(".")[0]
             and target.split(".")[0] not in ALLOWED[module.split(".")[0]]]
    assert not wrong, wrong


def test_the_check_sees_imports():
    """The graph is not empty-handed: it sees known edges (so the two checks above can fail)."""
    edges = graph()
    assert "rerank_contract.prompt" in edges["rerank_client.core"]
    assert "rerank_serving.stubs" in edges["rerank_serving.server"]
    assert "rerank_contract.limits" in edges["rerank_contract.prompt"]

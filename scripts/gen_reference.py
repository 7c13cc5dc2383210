"""Regenerate the tables of ``docs/reference.md`` that come from code (``--check``: fail if one is stale).

Each generated table sits between ``<!-- generated: NAME -->`` and ``<!-- end generated: NAME -->``;
``tests/test_reference_docs.py`` runs the check, so a setting or limit added in code and not here fails CI.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reference.md"


def ports_table() -> str:
    from rerank_contract.ports import DEFAULT

    rows = [("rest", "`HTTP_PORT`", "`--http-port`", "the REST API (rerank-gateway): `/v1/ranking`, `/v2/rerank`, `/v1/models`, "
                                                   "`/v1/health/*`, `/metrics`, `/docs`"),
            ("grpc", "`GRPC_PORT`", "`--grpc-port`", "Triton gRPC (KServe v2; NIM's gRPC contract)"),
            ("metrics", "`METRICS_PORT`", "`--metrics-port`", "Triton's Prometheus metrics"),
            ("triton_http", "`TRITON_HTTP_PORT`", "`--triton-http-port`", "Triton's own KServe v2 HTTP")]
    lines = ["| port | `Ports` field | make variable | rerank-serve flag | what |", "|---|---|---|---|---|"]
    lines += [f"| {getattr(DEFAULT, field)} | `{field}` | {var} | {flag} | {what} |" for field, var, flag, what in rows]
    return "\n".join(lines)


def argparse_table(add_arguments: Callable[[argparse.ArgumentParser], None]) -> str:
    """A flags table from the function that adds the flags to a parser."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    lines = ["| flag | default | meaning |", "|---|---|---|"]
    for action in parser._actions:
        default = "off" if isinstance(action, argparse._StoreTrueAction) else f"`{action.default}`"
        lines.append(f"| {', '.join(f'`{s}`' for s in action.option_strings)} | {default} | {action.help or ''} |")
    return "\n".join(lines)


def generators() -> dict[str, Callable[[], str]]:
    """Table name -> the function that writes it (imported here, so the docs follow the code)."""
    from rerank_gateway.settings import settings_table
    from rerank_serving.cli import add_arguments as serve_arguments

    return {"gateway-settings": settings_table, "ports": ports_table,
            "serve-flags": lambda: argparse_table(serve_arguments)}


def block(name: str, body: str) -> str:
    return f"<!-- generated: {name} -->\n{body}\n<!-- end generated: {name} -->"


def render(text: str) -> str:
    for name, make in generators().items():
        pattern = re.compile(rf"<!-- generated: {re.escape(name)} -->\n(?:.*?\n)?<!-- end generated: {re.escape(name)} -->",
                             re.S)
        if not pattern.search(text):
            raise SystemExit(f"{DOC}: no block for the generated table {name!r}")
        text = pattern.sub(lambda _: block(name, make()), text)
    return text


def main(argv: list[str]) -> int:
    text = DOC.read_text()
    fresh = render(text)
    if "--check" in argv:
        if fresh != text:
            print(f"{DOC} is out of date: run python scripts/gen_reference.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

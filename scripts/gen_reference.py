"""Regenerate the tables of ``docs/reference.md`` that come from code (``--check``: fail if one is stale).

Each generated table sits between ``<!-- generated: NAME -->`` and ``<!-- end generated: NAME -->``;
``tests/test_reference_docs.py`` runs the check, so a setting or limit added in code and not here fails CI.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reference.md"


def generators() -> dict[str, Callable[[], str]]:
    """Table name -> the function that writes it (imported here, so the docs follow the code)."""
    from rerank_gateway.settings import settings_table

    return {"gateway-settings": settings_table}


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

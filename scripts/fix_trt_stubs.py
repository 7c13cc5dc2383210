"""Make the pinned ``tensorrt-stubs`` parse, so that mypy can check our TensorRT code against them.

tensorrt-stubs 10.11.0.33.1 (also 10.12 and 10.13) is generated from TensorRT's bindings and has five
signatures that are not valid Python: four plugin methods with a parameter named ``in`` (a keyword)
and ``INetworkDefinition.add_scale_nd``, whose ``channel_axis`` follows parameters with defaults.
mypy then refuses the whole file. This renames ``in`` to ``in_`` and gives ``channel_axis`` a default,
touching nothing else, and checks that every stub file parses afterwards.

    python scripts/fix_trt_stubs.py .venv/typing-stubs
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

FIXES = [
    (re.compile(r"([(,] ?)in: "), r"\1in_: "),
    (re.compile(r"power: Weights = None, channel_axis: int\)"), "power: Weights = None, channel_axis: int = ...)"),
]


def fix(root: Path) -> int:
    changed = 0
    for stub in sorted(root.rglob("*.pyi")):
        text = stub.read_text()
        fixed = text
        for pattern, replacement in FIXES:
            fixed = pattern.sub(replacement, fixed)
        if fixed != text:
            stub.write_text(fixed)
            changed += 1
        ast.parse(fixed, filename=str(stub))  # raises if anything is still not Python
    return changed


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".venv/typing-stubs")
    print(f"fixed {fix(root)} stub file(s) under {root}")

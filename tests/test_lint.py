"""ruff over the whole repository, with the rules pyproject.toml selects (the same as `ruff check .`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_passes():
    done = subprocess.run([str(Path(sys.executable).with_name("ruff")), "check", "--no-cache", str(ROOT)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-2000:]

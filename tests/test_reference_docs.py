"""docs/reference.md's tables that come from code are the code's (regenerate: python scripts/gen_reference.py)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_generated_tables_are_current():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_reference.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_every_gateway_setting_is_in_the_reference():
    from rerank_gateway.settings import GatewaySettings, env_names, flag

    text = (ROOT / "docs" / "reference.md").read_text()
    for name in GatewaySettings.model_fields:
        assert f"`{flag(name)}`" in text and all(f"`{e}`" in text for e in env_names(name)), name


@pytest.mark.timeout(60)
def test_a_stale_table_is_caught(tmp_path, monkeypatch):
    """The check can fail: a reference with one row changed is reported out of date."""
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "scripts" / "gen_reference.py")
    assert spec and spec.loader
    gen_reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_reference)
    stale = tmp_path / "reference.md"
    stale.write_text(gen_reference.DOC.read_text().replace("`--port`", "`--porty`"))
    monkeypatch.setattr(gen_reference, "DOC", stale)
    assert gen_reference.main(["--check"]) == 1
    assert gen_reference.main([]) == 0 and gen_reference.main(["--check"]) == 0

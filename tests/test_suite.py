"""The suite's own rules: every test has a timeout, and every server test carries the `server` marker."""

from __future__ import annotations

import pytest


def test_every_test_has_a_timeout(pytestconfig: pytest.Config, request: pytest.FixtureRequest):
    """pytest-timeout, configured for every test (pyproject.toml): a hung server fails its test."""
    assert float(pytestconfig.getini("timeout")) > 0, "no per-test timeout configured"
    assert request.node.get_closest_marker("timeout") is None, "this test relies on the configured default"


def test_server_tests_carry_the_marker(request: pytest.FixtureRequest):
    """Using a server fixture without the marker stops collection, starting a server process fails the test
    (conftest.py); here, only that the guard is in place for unmarked tests."""
    import subprocess

    with pytest.raises(AssertionError, match="starts a server without the `server` marker"):
        subprocess.Popen(["tritonserver", "--help"])

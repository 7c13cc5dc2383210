"""The watchdog's bookkeeping: the restart budget and the /dev/shm cleanup (faults: test_faults.py)."""

from __future__ import annotations

import uuid

import pytest

from rerank_serving.stubs import SHM_DIR, SHM_PREFIX, alive, remove_shm_regions
from rerank_serving.watchdog import CrashLoop, RestartBudget


def test_restart_budget_stops_a_crash_loop():
    budget = RestartBudget(max_restarts=2, window_s=600)
    budget.spend("first")
    budget.spend("second")
    with pytest.raises(CrashLoop, match="2 restarts within 600s"):
        budget.spend("third")
    old = RestartBudget(max_restarts=1, window_s=0.0)
    old.spend("a")
    old.spend("b")  # the earlier restart is outside the window


def test_remove_shm_regions_only_removes_named_ones():
    mine = f"{SHM_PREFIX}_{uuid.uuid4()}"
    (SHM_DIR / mine).write_bytes(b"x")
    try:
        assert remove_shm_regions([mine, f"{SHM_PREFIX}_gone"]) == [mine]
        assert not (SHM_DIR / mine).exists()
    finally:
        (SHM_DIR / mine).unlink(missing_ok=True)


def test_alive():
    import os

    assert alive(os.getpid()) and not alive(2**22 + 12345)

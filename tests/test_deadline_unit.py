"""The deadline rules every step shares (rerank_contract/deadline.py), without a server."""

from __future__ import annotations

import json

import pytest

from rerank_contract import deadline

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("parameters,expected", [
    (None, None), ("", None), ("{}", None), ('{"truncate": "END"}', None),
    ('{"deadline_ns": 1700000000000000000}', 1700000000000000000),
    ('{"deadline_ns": "1700000000000000000"}', None), ('{"deadline_ns": true}', None),
    ('{"deadline_ns": 0}', None), ('{"deadline_ns": -5}', None), ('{"deadline_ns": 1.5}', None),
])
def test_a_deadline_is_a_positive_integer_parameter_or_none(parameters, expected):
    """Anything but a positive integer is no deadline: such a request is never dropped for time."""
    assert deadline.deadline_of(parameters) == expected


def test_deadline_ns_is_now_plus_the_budget():
    assert deadline.deadline_ns(0.25, now_ns=1_000) == 1_000 + 250_000_000
    assert json.loads(json.dumps({deadline.DEADLINE_PARAMETER: deadline.deadline_ns(1.0)}))["deadline_ns"] > 0


def test_late_without_a_speed_drops_only_what_has_expired():
    now = 10_000
    dropped, predicted = deadline.late([now - 1, now + 1, None, now], [100, 100, 100, 100], now, 0.0)
    assert dropped == {0: 0} and predicted == 0


def test_late_drops_what_the_batch_cannot_finish_in_time_and_keeps_the_rest():
    """10 ns per token: the batch of 300 tokens ends at now + 3,000; without request 0 (deadline
    now + 2,000) it holds 200 tokens and ends at now + 2,000, in time for request 1 (now + 2,500).
    Each dropped request is told the batch time predicted when it was dropped."""
    now = 1_000_000
    dropped, predicted = deadline.late([now + 2_000, now + 2_500, None], [100, 100, 100], now, 10.0)
    assert dropped == {0: 3_000} and predicted == 2_000
    # Dropping one may save another, but never someone who cannot make it even alone.
    dropped, predicted = deadline.late([now + 500, now + 900, now + 10_000], [100, 100, 100], now, 10.0)
    assert dropped == {0: 3_000, 1: 2_000} and predicted == 1_000


def test_expired_requests_go_first():
    """One already past its deadline and one only predicted late: dropping the first saves the second."""
    now = 1_000_000
    dropped, predicted = deadline.late([now - 1, now + 1_500], [100, 100], now, 10.0)
    assert dropped == {0: 2_000} and predicted == 1_000


def test_when_all_are_late_the_one_closest_alone_is_kept_so_the_engine_keeps_measuring():
    """When every request is predicted late, the one that comes closest to its deadline alone is still
    computed (unless its deadline has passed): a speed estimate that no run updates would otherwise
    drop everything. Here a (10 tokens, due in 100 ns) fits alone; b (10,000 tokens) never does."""
    now = 1_000_000
    dropped, predicted = deadline.late([now + 100, now + 200], [10, 10_000], now, 10.0)
    assert set(dropped) == {1} and predicted == 100
    dropped, predicted = deadline.late([now + 10], [100], now, 10.0)
    assert dropped == {} and predicted == 1_000, "a lone request is computed, late or not"
    dropped, _ = deadline.late([now - 5, now - 1], [100, 100], now, 10.0)
    assert set(dropped) == {0, 1}, "requests already past their deadline are always dropped"


def test_requests_without_a_deadline_are_never_late():
    dropped, predicted = deadline.late([None, None], [10_000, 10_000], 5, 1e6)
    assert dropped == {} and predicted == 20_000 * 1e6


def test_service_rate_averages_its_own_executions():
    rate = deadline.ServiceRate(weight=0.5)
    assert rate.ns_per_token == 0.0
    rate.observe(100, 1_000)
    assert rate.ns_per_token == 10.0
    rate.observe(100, 3_000)
    assert rate.ns_per_token == 20.0
    rate.observe(0, 5_000)  # nothing computed: no sample
    assert rate.ns_per_token == 20.0


def test_the_expired_message_names_the_step_and_what_triton_says():
    """Clients recognise a drop by Triton's own phrase (rerank_client maps it to DeadlineExceededError)."""
    passed = deadline.expired_message("tokenizer", 1_000_000, 3_000_000)
    assert passed.startswith(deadline.EXPIRED) and "passed 2 ms ago" in passed and "tokenizer" in passed
    predicted = deadline.expired_message("engine", 10_000_000, 5_000_000, predicted_ns=8_000_000)
    assert "5 ms away" in predicted and "about 8 ms" in predicted and "engine" in predicted

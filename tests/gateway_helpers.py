"""Helpers for the REST gateway tests: plain HTTP calls and the ensemble's own answer over gRPC."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import requests

from rerank_build.textgen import random_text

JSON = {"Content-Type": "application/json"}


def post(gateway, path: str, body: Any = None, headers: dict | None = None, data: bytes | None = None,
         timeout: float = 60) -> requests.Response:
    """POST JSON (or raw ``data``) to the gateway."""
    if data is None:
        return requests.post(gateway.url + path, json=body, headers=headers, timeout=timeout)
    return requests.post(gateway.url + path, data=data, headers={**JSON, **(headers or {})}, timeout=timeout)


def get(gateway, path: str, **kwargs: Any) -> requests.Response:
    return requests.get(gateway.url + path, timeout=30, **kwargs)


def assert_error(response: requests.Response, status: int, fragment: str = "") -> dict:
    """An error answer: the status, a JSON body with object/message/detail, ``fragment`` in the message."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert body["object"] == "error" and isinstance(body["message"], str) and isinstance(body["detail"], str), body
    assert body["code"] == status
    assert fragment in body["message"], (fragment, body)
    return body


def expected_order(logits: np.ndarray) -> list[int]:
    """The server's order: logit descending, ties by lower index."""
    return [int(i) for i in np.lexsort((np.arange(len(logits)), -logits))]


def distinct_passages(n: int, seed: int) -> tuple[str, list[str]]:
    """A query and ``n`` distinct passages (seeded) of mixed languages and lengths."""
    rng = random.Random(seed)
    query = random_text(rng, 8)
    passages: list[str] = []
    while len(passages) < n:
        text = random_text(rng, rng.randint(3, 60))
        if text.strip() and text not in passages:
            passages.append(text)
    return query, passages


def assert_well_separated(logits: np.ndarray, top: int, gap: float = 1e-3) -> None:
    """The first ``top + 1`` ranks differ by more than rounding, so any correct server orders them alike."""
    ranked = np.sort(logits)[::-1][:top + 1]
    assert np.all(np.diff(ranked) < -gap), f"near ties among the top {top}: {ranked}"

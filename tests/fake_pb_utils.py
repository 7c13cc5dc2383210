"""A minimal stand-in for Triton's ``triton_python_backend_utils`` to unit-test model.py logic.

Only what our models use. Every model is also tested on a real tritonserver (test_server.py)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np


class TritonError:
    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS = range(7)

    def __init__(self, message: str, code: int = 0) -> None:
        self._message, self._code = message, code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


class Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, np.asarray(array)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class InferenceRequest:
    def __init__(self, inputs: dict[str, np.ndarray], parameters: dict[str, Any] | None = None) -> None:
        self.inputs = {k: Tensor(k, v) for k, v in inputs.items()}
        self._parameters = json.dumps(parameters or {})

    def parameters(self) -> str:
        return self._parameters


class InferenceResponse:
    def __init__(self, output_tensors: list[Tensor] | None = None, error: TritonError | None = None) -> None:
        self.output_tensors = {t.name(): t.as_numpy() for t in output_tensors or []}
        self.error = error

    def has_error(self) -> bool:
        return self.error is not None


def get_input_tensor_by_name(request: InferenceRequest, name: str) -> Tensor | None:
    return request.inputs.get(name)


class Logger:
    """Triton's python-backend logger: messages go to the test's log."""

    @staticmethod
    def log_warn(message: str) -> None:
        import logging

        logging.getLogger("pb_utils").warning(message)

    log_info = log_warn


class MetricFamily:
    """Triton's custom metrics: a family of labelled counters or gauges (values kept for asserts)."""

    COUNTER, GAUGE = "counter", "gauge"

    def __init__(self, name: str, description: str, kind: str) -> None:
        self.name, self.kind, self.metrics = name, kind, []

    def Metric(self, labels: dict[str, str] | None = None) -> "_Metric":  # noqa: N802 - Triton's name
        metric = _Metric(labels or {})
        self.metrics.append(metric)
        return metric


class _Metric:
    def __init__(self, labels: dict[str, str]) -> None:
        self.labels, self._value = labels, 0.0

    def increment(self, value: float) -> None:
        self._value += value

    def value(self) -> float:
        return self._value

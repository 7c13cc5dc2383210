"""Controlled slowness for server tests: a served python model held at a gate the test opens.

:func:`gate_model` wraps a model of a built repository: its ``model.py`` becomes the served one
(``served_model.py``, unchanged) under a subclass whose ``execute`` first writes one line per
execution to ``<dir>/<model>.executions`` (how many requests it was handed, and their rows), then
waits while ``<dir>/<model>.closed`` exists. A test closes the gate, sees a request arrive, and knows
where everything queued behind it is, without timing anything.
"""

from __future__ import annotations

import time
from pathlib import Path

WRAPPER = '''"""Test-only: the served model, held while {closed!r} exists (tests/gated_models.py)."""
import importlib.util
import os
import time
from pathlib import Path

_spec = importlib.util.spec_from_file_location("served_{model}", Path(__file__).with_name("served_model.py"))
_served = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_served)
pb_utils = _served.pb_utils


class TritonPythonModel(_served.TritonPythonModel):
    def execute(self, requests):
        rows = sum(pb_utils.get_input_tensor_by_name(r, {first_input!r}).as_numpy().shape[0] for r in requests)
        with open({log!r}, "a") as log:
            log.write(f"{{len(requests)}} {{rows}}\\n")
        while os.path.exists({closed!r}):
            time.sleep(0.01)
        return super().execute(requests)
'''


class Gate:
    def __init__(self, directory: Path, model: str) -> None:
        self.closed_file = directory / f"{model}.closed"
        self.log = directory / f"{model}.executions"
        self.model = model

    def close(self) -> None:
        self.closed_file.write_text("")

    def open(self) -> None:
        self.closed_file.unlink(missing_ok=True)

    def executions(self) -> list[tuple[int, int]]:
        """(requests, rows) of each execution so far."""
        if not self.log.exists():
            return []
        return [tuple(map(int, line.split())) for line in self.log.read_text().splitlines() if line]  # type: ignore[misc]

    def wait_for_executions(self, count: int, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.executions()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.model}: {len(self.executions())} executions, waited for {count}")
            time.sleep(0.01)


def gate_model(repository: Path, model: str, first_input: str, directory: Path) -> Gate:
    """Wrap ``model`` of ``repository`` (in place) with a gate kept in ``directory`` (open at first)."""
    version = repository / model / "1"
    (version / "model.py").rename(version / "served_model.py")
    gate = Gate(directory, model)
    (version / "model.py").write_text(WRAPPER.format(model=model, first_input=first_input, log=str(gate.log),
                                                     closed=str(gate.closed_file)))
    return gate

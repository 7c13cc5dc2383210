"""Threads whose exceptions reach the test: a thread that dies must fail it, never vanish."""

from __future__ import annotations

import threading
from typing import Any, Callable


class Worker(threading.Thread):
    """A thread that keeps what its target raised; :meth:`check` re-raises it in the test's thread."""

    def __init__(self, target: Callable[..., Any], *args: Any, name: str | None = None) -> None:
        super().__init__(name=name, daemon=True)
        self._fn, self._args = target, args
        self.error: BaseException | None = None
        self.result: Any = None

    def run(self) -> None:
        try:
            self.result = self._fn(*self._args)
        except BaseException as exc:  # noqa: BLE001 - handed to the test by check()
            self.error = exc

    def check(self, timeout_s: float = 60.0) -> Any:
        """Join; raise what the thread raised, or fail when it is still running."""
        self.join(timeout_s)
        if self.is_alive():
            raise AssertionError(f"thread {self.name} still running after {timeout_s:.0f}s")
        if self.error is not None:
            raise AssertionError(f"thread {self.name} failed: {self.error!r}") from self.error
        return self.result


def run_all(targets: list[Callable[[], Any]], timeout_s: float = 60.0) -> list[Any]:
    """Run every target in its own thread at once; their results, or the first thread's failure."""
    workers = [Worker(t, name=f"worker-{i}") for i, t in enumerate(targets)]
    for w in workers:
        w.start()
    return [w.check(timeout_s) for w in workers]

"""Starting child processes (``rerank_serving.server.spawn``) from a threaded process, without a server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from stack_helpers import children

#: In a fresh interpreter: another thread holds the import lock of ``ctypes`` (as a thread importing it
#: at that moment would) while the main thread spawns a child. A child that imports anything between
#: fork and exec waits forever on its copy of that lock, and so does Popen, waiting for the exec.
SCRIPT = """
import importlib._bootstrap as bootstrap, threading
from rerank_serving.server import spawn
held, release = threading.Event(), threading.Event()
def hold():
    lock = bootstrap._get_module_lock("ctypes")
    lock.acquire()
    held.set()
    release.wait()
    lock.release()
threading.Thread(target=hold, daemon=True).start()
held.wait()
proc = spawn(["true"], {}, None)
print("exit", proc.wait(30), flush=True)
release.set()
"""


def test_spawn_imports_nothing_in_the_forked_child():
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        for pid in children(proc.pid):  # the stuck child is in a session of its own
            os.kill(pid, signal.SIGKILL)
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError("spawn hung: the forked child waited on a lock another thread held") from None
    assert proc.returncode == 0 and "exit 0" in out, err[-2000:]

"""Run a real ``tritonserver`` on CPU: the binary shipped in the ``nvidia-pytriton`` wheel.

Quirks handled here (measured; docs/triton.md):
- the python-backend stub must sit in that package's ``tritonserver/backends/python/`` (its RPATH
  is relative), so we copy the one for this interpreter's version there once;
- python models see the venv's packages only when the venv's ``bin`` is first on ``PATH``;
- a venv built from another interpreter than the system libpython needs that interpreter's
  ``LIBDIR`` on ``LD_LIBRARY_PATH``.
:class:`TritonServer` starts the server in its own process group and always kills the whole
group on exit, so tests never leave a process behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path
from typing import Callable

from rerank_contract.ports import Ports

from .stubs import Stub, alive, python_stubs, remove_shm_regions

logger = logging.getLogger(__name__)
#: SIGTERM grace for a tritonserver with a dead python stub (it would not stop by itself).
DEAD_STUB_GRACE_S = 3.0


class ServerError(RuntimeError):
    """tritonserver could not be found, started or reached."""


def pytriton_root() -> Path:
    try:
        import pytriton
    except ImportError as exc:  # pragma: no cover - pinned dependency
        raise ServerError("nvidia-pytriton is not installed: run `make setup`") from exc
    return Path(pytriton.__file__).resolve().parent / "tritonserver"


def tritonserver_binary() -> Path:
    """``$TRITONSERVER_BIN`` (e.g. NVIDIA's container, with the TensorRT backend), else pytriton's."""
    override = os.environ.get("TRITONSERVER_BIN")
    binary = Path(override) if override else pytriton_root() / "bin" / "tritonserver"
    if not binary.is_file():
        raise ServerError(f"no tritonserver binary at {binary}")
    return binary


def backend_directory() -> Path:
    """The backends beside the binary (``/opt/tritonserver/backends`` in NVIDIA's containers)."""
    return Path(os.environ.get("TRITON_BACKEND_DIR") or tritonserver_binary().parent.parent / "backends")


def ensure_python_stub() -> Path | None:
    """Copy the python-backend stub for this interpreter next to libtriton_python.so (idempotent).

    Only pytriton's server needs it; NVIDIA's containers ship the stub in place.
    """
    if os.environ.get("TRITONSERVER_BIN"):
        return None
    root = pytriton_root()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    src = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    dst = root / "backends" / "python" / "triton_python_backend_stub"
    if not src.is_file():
        raise ServerError(f"nvidia-pytriton ships no python-backend stub for Python {version}")
    if not dst.is_file() or dst.stat().st_size != src.stat().st_size:
        shutil.copy2(src, dst)
        logger.info("installed the python-backend stub for Python %s", version)
    return dst


def server_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment in which the python models see this venv's packages."""
    env = dict(os.environ if base is None else base)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([venv_bin] + [p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin])
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [libdir, env.get("LD_LIBRARY_PATH", "")]))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.pop("PYTHONPATH", None)  # ignored by the stub anyway; keep the models honest
    return env


def free_ports(n: int = 3) -> list[int]:
    """Ports the OS considers free right now (bound together so they differ)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def free_stack_ports() -> Ports:
    """Four free ports for a whole stack (tests, benchmarks)."""
    return Ports(*free_ports(4))


#: Triton API groups that change the server (model load/unload, shared-memory registration, log and
#: trace settings): restricted on both protocols to requests carrying ADMIN_HEADER with the admin key.
RESTRICTED_APIS = ("model-repository", "shared-memory", "logging", "trace")
ADMIN_HEADER = "triton-admin-key"
ADMIN_KEY_ENV = "RERANK_TRITON_ADMIN_KEY"


def admin_key() -> str:
    """``$RERANK_TRITON_ADMIN_KEY``, else a random key nobody is told (the admin APIs are then closed)."""
    return os.environ.get(ADMIN_KEY_ENV) or secrets.token_urlsafe(32)


def server_command(repository: Path, ports: Ports, host: str = "127.0.0.1", log_verbose: int = 0,
                   extra: list[str] | None = None, admin: str | None = None, *, binary: str | Path | None = None,
                   backend_dir: str | Path | None = None, gpu_metrics: bool = False) -> list[str]:
    """tritonserver's command line, written in this one place for every way we start it: the local stack
    (:class:`TritonServer`), the serving image (``supervise.py --image``) and the tests.

    Model control is off (no load/unload API), readiness is strict, and the admin API groups
    (:data:`RESTRICTED_APIS`) answer only requests carrying :data:`ADMIN_HEADER` with ``admin`` (default
    :func:`admin_key`). ``binary`` and ``backend_dir`` default to this machine's (pytriton's, or
    ``$TRITONSERVER_BIN``); GPU metrics are off unless asked for (there is no GPU on the CPU path)."""
    restricted = f"{','.join(RESTRICTED_APIS)}:{ADMIN_HEADER}={admin or admin_key()}"
    return [
        str(binary or tritonserver_binary()),
        f"--model-repository={repository}",
        f"--backend-directory={backend_dir or backend_directory()}",
        "--model-control-mode=none",
        "--strict-readiness=true",
        "--exit-on-error=true",
        f"--http-address={host}", f"--http-port={ports.triton_http}",
        f"--grpc-address={host}", f"--grpc-port={ports.grpc}",
        f"--metrics-address={host}", f"--metrics-port={ports.metrics}",
        f"--allow-gpu-metrics={'true' if gpu_metrics else 'false'}",
        f"--http-restricted-api={restricted}", f"--grpc-restricted-protocol={restricted}",
        f"--log-verbose={log_verbose}",
        *(extra or []),
    ]


def _libc_prctl() -> Callable[..., int] | None:
    """libc's ``prctl``, looked up here, in the parent (None where there is none)."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return None


_PRCTL = _libc_prctl()
_PR_SET_PDEATHSIG = 1
_SIGTERM = int(signal.SIGTERM)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the process that started it dies (Linux), so a
    killed test run or benchmark never leaves a server behind. The kernel ties this to the thread
    that forked, so :meth:`TritonServer.start` arms it only from the main thread.

    The forked child of a threaded process holds copies of the locks other threads held at the fork
    (a module's import lock among them), so this runs no import and no lookup: one call into libc,
    resolved in the parent."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, _SIGTERM)


def spawn(cmd: list[str], env: dict[str, str], log_path: Path | None) -> subprocess.Popen:
    """Start ``cmd`` in its own process group, tied to this process's life (see :func:`_die_with_parent`).

    ``log_path``: a file (appended to), ``-`` for this process's own stdout/stderr, None to discard.
    """
    inherit = log_path is not None and str(log_path) == "-"
    log = None if inherit else (open(log_path, "ab") if log_path else subprocess.DEVNULL)
    # PR_SET_PDEATHSIG follows the starting *thread*: only arm it from the main thread.
    on_main = threading.current_thread() is threading.main_thread()
    try:
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=None if inherit else subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_die_with_parent if on_main else None)
    finally:
        if log not in (None, subprocess.DEVNULL):
            log.close()  # type: ignore[union-attr]


def stop_group(proc: subprocess.Popen, timeout_s: float, name: str) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left (children included)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        logger.warning("%s did not stop in %.0fs; killing it", name, timeout_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


class TritonServer:
    """A tritonserver child process; a context manager that always cleans up its process group."""

    def __init__(self, repository: str | Path, ports: Ports | None = None, host: str = "127.0.0.1",
                 log_path: str | Path | None = None, extra_args: list[str] | None = None,
                 log_verbose: int = 0) -> None:
        self.repository = Path(repository).resolve()
        self.ports = ports or free_stack_ports()
        self.host = host
        self.log_path = Path(log_path) if log_path else None
        self.extra_args = extra_args
        self.log_verbose = log_verbose
        self.admin_key = admin_key()  # the same across restarts of this server
        self.process: subprocess.Popen | None = None
        self.stubs: list[Stub] = []  # its python-backend stubs, recorded once it is ready

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.ports.grpc}"

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.ports.triton_http}"

    def url(self, protocol: str) -> str:
        return self.grpc_url if protocol == "grpc" else self.http_url

    def start(self, timeout_s: float = 120.0) -> "TritonServer":
        ensure_python_stub()
        cmd = server_command(self.repository, self.ports, self.host, self.log_verbose, self.extra_args,
                             self.admin_key)
        logger.info("starting tritonserver on http %d / grpc %d", self.ports.triton_http, self.ports.grpc)
        self.process = spawn(cmd, server_env(), self.log_path)
        try:
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        self.stubs = python_stubs(self.process.pid)
        return self

    def wait_ready(self, timeout_s: float) -> None:
        import tritonclient.http as httpclient

        deadline = time.monotonic() + timeout_s
        client = httpclient.InferenceServerClient(self.http_url, connection_timeout=2.0, network_timeout=2.0)
        try:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise ServerError(f"tritonserver exited with code {self.process.returncode} while starting"
                                      + (f"; see {self.log_path}" if self.log_path else ""))
                with contextlib.suppress(Exception):
                    if client.is_server_ready():
                        return
                time.sleep(0.25)
        finally:
            client.close()
        raise ServerError(f"tritonserver was not ready after {timeout_s:.0f}s")

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left (stubs included), and remove the
        stubs' ``/dev/shm`` regions that a killed server leaves behind. With a dead stub, tritonserver
        never finishes a SIGTERM (measured: ~30 s to its own timeout), so it gets a short grace then."""
        proc, self.process = self.process, None
        if proc is None:
            return
        stubs = {s.pid: s for s in [*self.stubs, *python_stubs(proc.pid)]}.values()
        if any(not alive(s.pid) for s in stubs):
            timeout_s = min(timeout_s, DEAD_STUB_GRACE_S)
        stop_group(proc, timeout_s, "tritonserver")
        removed = remove_shm_regions([s.shm_region for s in stubs if s.shm_region])
        if removed:
            logger.info("removed %d /dev/shm regions of stopped python stubs", len(removed))

    def __enter__(self) -> "TritonServer":
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def process_group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover
        return True
    return True

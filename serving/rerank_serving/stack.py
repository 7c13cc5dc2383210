"""The whole serving stack on one machine: tritonserver plus the REST gateway, in NIM's port layout.

Ports (:class:`rerank_contract.ports.Ports`): the REST API (gateway) on 8000, Triton gRPC on 8001,
Triton metrics on 8002 and Triton's own KServe HTTP on 8003. :class:`ServingStack` is what ``rerank-serve``
(and ``rerank-build serve``, and so ``make serve``), the
tests and the load tests start; :func:`serve` runs it in the foreground until Ctrl-C or SIGTERM, with
the watchdog (``watchdog.py``) restarting what dies, and stops both processes (and every child of
theirs) whichever way it ends.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from rerank_contract.ports import DEFAULT, Ports

from .server import ServerError, TritonServer, free_stack_ports, server_env, spawn, stop_group
from .watchdog import CrashLoop, StackWatchdog

logger = logging.getLogger(__name__)


#: Deprecated name of :class:`rerank_contract.ports.Ports` (the stack's ports and tritonserver's were two
#: types; ``ServePorts(http, grpc, metrics, triton_http)`` still builds the same value).
ServePorts = Ports


def local_address(host: str) -> str:
    """Where a process on this machine reaches a server bound to ``host``."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


class GatewayProcess:
    """``rerank-gateway`` as a child process in its own process group (workers included)."""

    def __init__(self, triton_grpc: str, host: str = "127.0.0.1", port: int = DEFAULT.rest,
                 log_path: str | Path | None = None, extra_args: list[str] | None = None) -> None:
        self.triton_grpc = triton_grpc
        self.host = host
        self.port = port
        self.log_path = Path(log_path) if log_path else None
        self.extra_args = list(extra_args or [])
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{local_address(self.host)}:{self.port}"

    def start(self, timeout_s: float = 60.0) -> "GatewayProcess":
        cmd = [sys.executable, "-m", "rerank_gateway", "--triton", self.triton_grpc, "--host", self.host,
               "--port", str(self.port), *self.extra_args]
        logger.info("starting the REST gateway on %s:%d", self.host, self.port)
        self.process = spawn(cmd, server_env(), self.log_path)
        try:
            self.wait_live(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def status(self, path: str, timeout_s: float = 2.0) -> int | None:
        """HTTP status of ``GET path``; None when nothing answers."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout_s) as response:
                return response.status
        except urllib.error.HTTPError as err:
            return err.code
        except OSError:
            return None

    def wait_live(self, timeout_s: float) -> None:
        self._wait("/v1/health/live", timeout_s)

    def wait_ready(self, timeout_s: float) -> None:
        self._wait("/v1/health/ready", timeout_s)

    def _wait(self, path: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerError(f"rerank-gateway exited with code {self.process.returncode} while starting"
                                  + (f"; see {self.log_path}" if self.log_path else ""))
            if self.status(path) == 200:
                return
            time.sleep(0.2)
        raise ServerError(f"rerank-gateway: {path} did not answer 200 within {timeout_s:.0f}s")

    def stop(self, timeout_s: float = 15.0) -> None:
        proc, self.process = self.process, None
        if proc is not None:
            stop_group(proc, timeout_s, "rerank-gateway")

    def __enter__(self) -> "GatewayProcess":
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def replica_ports(ports: Ports, replica: int) -> Ports:
    """Triton's ports for replica ``replica`` (0: the stack's own; k: each port + 10 k)."""
    return ports.offset(10 * replica)


class ServingStack:
    """tritonserver (one or several replicas) and the gateway in front of it; a context manager that
    stops them all. With replicas the gateway spreads requests over every replica's gRPC port (the
    client library's multi-endpoint target) and retries a failed one on another."""

    def __init__(self, repository: str | Path, ports: Ports | None = None, host: str = "127.0.0.1",
                 log_dir: str | Path | None = None, gateway_args: list[str] | None = None,
                 triton_args: list[str] | None = None, log_verbose: int = 0, with_gateway: bool = True,
                 replicas: int = 1, replica_port_list: list[Ports] | None = None) -> None:
        if replicas < 1:
            raise ValueError(f"replicas must be at least 1, got {replicas}")
        chosen = ports is not None
        self.ports = ports or free_stack_ports()
        self.host = host
        self.with_gateway = with_gateway
        logs = Path(log_dir) if log_dir and str(log_dir) != "-" else None
        if logs:
            logs.mkdir(parents=True, exist_ok=True)
        terminal = log_dir is not None and str(log_dir) == "-"
        # Given ports: each replica's are offset by 10 (serve --replicas); free ones: more free ones.
        port_list = replica_port_list or [replica_ports(self.ports, 0)] + [
            replica_ports(self.ports, k) if chosen else free_stack_ports() for k in range(1, replicas)]

        def log(name: str) -> str | Path | None:
            return "-" if terminal else (logs / name if logs else None)

        self.tritons = [TritonServer(repository, p, host, log_path=log(f"tritonserver{'-' + str(k) if k else ''}.log"),
                                     extra_args=triton_args, log_verbose=log_verbose)
                        for k, p in enumerate(port_list[:replicas])]
        local = local_address(host)
        target = (f"{local}:{port_list[0].grpc}" if replicas == 1
                  else "ipv4:" + ",".join(f"{local}:{p.grpc}" for p in port_list[:replicas]))
        self.gateway = GatewayProcess(target, host, self.ports.rest, log_path=log("gateway.log"),
                                      extra_args=gateway_args)

    @property
    def triton(self) -> TritonServer:
        """The first (or only) replica."""
        return self.tritons[0]

    @property
    def rest_url(self) -> str:
        return self.gateway.url

    @property
    def grpc_url(self) -> str:
        return self.triton.grpc_url

    @property
    def triton_http_url(self) -> str:
        return self.triton.http_url

    def start(self, timeout_s: float = 180.0) -> "ServingStack":
        started = time.monotonic()
        try:
            for triton in self.tritons:
                triton.start(timeout_s)
            if self.with_gateway:
                self.gateway.start(60.0)
                self.gateway.wait_ready(max(10.0, timeout_s - (time.monotonic() - started)))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self.gateway.stop()
        for triton in self.tritons:
            triton.stop()

    def __enter__(self) -> "ServingStack":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(repository: Path, ports: Ports, host: str, gateway: bool = True, log_verbose: int = 0,
          gateway_args: list[str] | None = None, watchdog: bool = True, replicas: int = 1) -> int:
    """Foreground: start the stack, log where it listens, keep it serving (the watchdog restarts a
    dead python stub's tritonserver, or a dead part), stop it all on Ctrl-C / SIGTERM."""
    if not (repository / ".rerank-repository.json").is_file() and not any(repository.glob("*/config.pbtxt")):
        raise ServerError(f"{repository} holds no model repository: run `rerank-build repository` first")
    stop = threading.Event()
    stack = ServingStack(repository, ports, host, log_dir="-", gateway_args=gateway_args, log_verbose=log_verbose,
                         with_gateway=gateway, replicas=replicas)
    guard = StackWatchdog(stack)
    parts = [*stack.tritons] + ([stack.gateway] if gateway else [])
    with stack:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        guard.arm()
        where = [f"Triton{' replica ' + str(k) if replicas > 1 else ''} gRPC {host}:{t.ports.grpc}, "
                 f"KServe HTTP {host}:{t.ports.triton_http}, metrics {host}:{t.ports.metrics}" for k, t in enumerate(stack.tritons)]
        if gateway:
            where.insert(0, f"REST API http://{host}:{ports.rest} (docs: /docs)")
        logger.info("serving: %s. Ctrl-C stops.", "; ".join(where))
        while not stop.wait(0.5):
            try:
                if watchdog:
                    guard.check()
                elif any(p.process is None or p.process.poll() is not None for p in parts):
                    raise ServerError("a part of the stack exited (--no-watchdog)")
            except (CrashLoop, ServerError) as exc:
                logger.error("%s; stopping", exc)
                return 1
        logger.info("stopping")
    return 0

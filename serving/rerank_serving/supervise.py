"""Run tritonserver, and stop it when one of its python-backend stubs dies (standard library only).

Triton 2.51 never notices a dead python stub: readiness stays 200 and every request to that model
fails until a person restarts it (docs/operations.md). In the serving image this module is the
container's main process (``docker/triton-entrypoint.sh``): once the server is ready it records the
stubs' process ids (``stubs.py``, the same module the local watchdog and the tests use), and when one
of them dies it stops tritonserver (SIGTERM, SIGKILL after 3 s: a server with a dead stub does not
stop by itself) and exits 1, so that the container's restart policy (Docker's
``restart: unless-stopped``, a Kubernetes pod) starts a fresh server. SIGTERM and SIGINT are passed
to tritonserver; its exit code becomes this process's.

    python3 -m rerank_serving.supervise --image [-- extra tritonserver flags]   # the serving image
    python3 -m rerank_serving.supervise [--ready-url URL] -- tritonserver ...    # any command line

``--image`` builds the image's tritonserver command line with :func:`rerank_serving.server.server_command`,
the one place the flags are written (``--print`` shows it without running it).
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from rerank_contract.ports import DEFAULT

from .server import server_command
from .stubs import Stub, alive, python_stubs, remove_shm_regions

logger = logging.getLogger("rerank_serving.supervise")
POLL_S = 1.0
KILL_AFTER_S = 3.0
#: Where NVIDIA's Triton container keeps the server, and where the image mounts the repository.
IMAGE_BINARY = "tritonserver"  # on PATH in NVIDIA's container (/opt/tritonserver/bin)
IMAGE_BACKENDS = Path("/opt/tritonserver/backends")
IMAGE_REPOSITORY = Path("/models")


def image_command(extra: list[str]) -> list[str]:
    """The serving image's tritonserver: every interface on NIM's ports (KServe HTTP on 8003), GPU
    metrics on, model control off, the admin APIs behind ``$RERANK_TRITON_ADMIN_KEY``."""
    return server_command(IMAGE_REPOSITORY, DEFAULT, host="0.0.0.0", extra=extra, binary=IMAGE_BINARY,
                          backend_dir=IMAGE_BACKENDS, gpu_metrics=True)


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def ready_url(server_args: list[str]) -> str:
    """Triton's KServe HTTP readiness, from the last ``--http-port`` (Triton's default 8000)."""
    port = "8000"
    for arg in server_args:
        if arg.startswith("--http-port="):
            port = arg.split("=", 1)[1]
    return f"http://127.0.0.1:{port}/v2/health/ready"


def stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(KILL_AFTER_S)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def supervise(command: list[str], url: str) -> int:
    server = subprocess.Popen(command)
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True  # the stubs now exit with the models they serve: that is no fault
        server.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    watched: list[Stub] = []
    while server.poll() is None:
        time.sleep(POLL_S)
        if stopping:
            continue
        if not watched:
            if ready(url):
                watched = python_stubs(server.pid)
                logger.info("ready; watching %d python stubs", len(watched))
            continue
        dead = sorted(s.pid for s in watched if not alive(s.pid))
        if dead and server.poll() is None:
            logger.error("python stub(s) %s died; tritonserver would keep failing their requests: stopping it "
                         "so that the container restarts", dead)
            stop(server)
            remove_shm_regions([s.shm_region for s in watched if s.shm_region])  # they outlive the stubs
            return 1
    return server.returncode if server.returncode >= 0 else 128 - server.returncode


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="triton_supervise: %(message)s", stream=sys.stderr)
    parser = argparse.ArgumentParser(prog="python3 -m rerank_serving.supervise", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", action="store_true",
                        help="run the serving image's tritonserver; what follows -- are extra tritonserver flags")
    parser.add_argument("--print", action="store_true", help="print the command line and exit")
    parser.add_argument("--ready-url", help="default: from tritonserver's --http-port")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- tritonserver and its arguments")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.image:
        command = image_command(command)
    if not command:
        parser.error("give --image, or the tritonserver command after --")
    if args.print:
        print(shlex.join(command))
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return supervise(command, args.ready_url or ready_url(command))


if __name__ == "__main__":
    sys.exit(main())

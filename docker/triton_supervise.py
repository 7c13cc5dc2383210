"""Run tritonserver, and stop it when one of its python-backend stubs dies (stdlib only).

Triton 2.51 never notices a dead python stub: readiness stays 200 and every request to that model
fails until a person restarts it (docs/operations.md). In the serving image this script is the
container's main process: once the server is ready it records the stubs' process ids, and when one
of them dies it stops tritonserver (SIGTERM, SIGKILL after 3 s: a server with a dead stub does not
stop by itself) and exits 1, so that the container's restart policy (Docker's
``restart: unless-stopped``, a Kubernetes pod) starts a fresh server. SIGTERM and SIGINT are passed
to tritonserver; its exit code becomes this script's.

    python3 triton_supervise.py [--ready-url URL] -- tritonserver --model-repository=/models ...
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

STUB = "triton_python_backend_stub"
SHM_PREFIX = "triton_python_backend_shm_region"
POLL_S = 1.0
KILL_AFTER_S = 3.0


def log(message: str) -> None:
    print(f"triton_supervise: {message}", file=sys.stderr, flush=True)


def stubs_of(parent: int) -> dict[int, str | None]:
    """Live python stubs among ``parent``'s children (a zombie is dead): pid -> its /dev/shm region."""
    found: dict[int, str | None] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = [a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0")]
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, ...
        if int(fields[1]) == parent and fields[0] != "Z" and argv[0].endswith(STUB):
            found[int(entry.name)] = next((a for a in argv if a.startswith(SHM_PREFIX)), None)
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ready-url", help="default: from tritonserver's --http-port")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- tritonserver and its arguments")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the tritonserver command after --")
    url = args.ready_url or ready_url(command)
    server = subprocess.Popen(command)
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True  # the stubs now exit with the models they serve: that is no fault
        server.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    watched: dict[int, str | None] = {}
    while server.poll() is None:
        time.sleep(POLL_S)
        if stopping:
            continue
        if not watched:
            if ready(url):
                watched = stubs_of(server.pid)
                log(f"ready; watching {len(watched)} python stubs")
            continue
        dead = sorted(pid for pid in watched if not alive(pid))
        if dead and server.poll() is None:
            log(f"python stub(s) {dead} died; tritonserver would keep failing their requests: stopping it "
                "so that the container restarts")
            stop(server)
            for region in filter(None, watched.values()):  # the stubs' shared memory outlives them
                Path("/dev/shm", region).unlink(missing_ok=True)
            return 1
    return server.returncode if server.returncode >= 0 else 128 - server.returncode


if __name__ == "__main__":
    sys.exit(main())

"""``make loadtest``: a headless, time-bounded Locust run and its report folder.

Runs against a stack at --gateway-url/--grpc-url/--http-url, or starts one (tritonserver and the REST
gateway) on --repository when no Triton answers at --grpc-url.
Writes ``build/reports/loadtest-<time>/``: Locust's CSV and HTML, ``summary.md`` (requests/s,
pairs/s, p50/p95/p99, failures by kind) and PNG plots (latency percentiles and throughput over time).
Exits non-zero on unexpected failures (any failure unless its kind is in --allow-failures).
"""

from __future__ import annotations

import argparse
import csv
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from rerank_contract.ports import DEFAULT as DEFAULT_PORTS

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
USER_CLASSES = ("RestGatewayUser", "GrpcClientUser", "HttpClientUser", "GrpcRawUser", "HttpRawUser")


def parse_duration(text: str) -> int:
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?", text.strip())
    if not match or not any(match.groups()):
        raise argparse.ArgumentTypeError(f"bad duration {text!r} (e.g. 60s, 2m, 1m30s)")
    h, m, s = (int(x or 0) for x in match.groups())
    return h * 3600 + m * 60 + s


def server_ready(grpc_url: str) -> bool:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        return bool(client.is_server_ready(client_timeout=2))
    except Exception:  # noqa: BLE001 - nothing there
        return False
    finally:
        client.close()


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def failure_kind(error: str) -> str:
    match = re.match(r"\s*(\w+)\(", error)
    return match.group(1) if match else error.split(":")[0][:60]


def summarize(prefix: Path, duration_s: int, users: int, allowed: set[str]) -> tuple[str, int]:
    """summary.md text and the number of unexpected failures."""
    stats = read_rows(prefix.with_name(prefix.name + "_stats.csv"))
    failures = read_rows(prefix.with_name(prefix.name + "_failures.csv"))
    lines = [f"# Load test: {users} users, {duration_s} s", "",
             "| type | requests | failures | requests/s | pairs/s | p50 ms | p95 ms | p99 ms |",
             "|---|---|---|---|---|---|---|---|"]
    by_type: dict[str, list[dict[str, str]]] = {}
    for row in stats:
        if row["Name"] != "Aggregated":
            by_type.setdefault(row["Type"], []).append(row)
    for kind, rows in sorted(by_type.items()):
        requests = sum(int(r["Request Count"]) for r in rows)
        fails = sum(int(r["Failure Count"]) for r in rows)
        rps = sum(float(r["Requests/s"]) for r in rows)
        pps = sum(float(r["Requests/s"]) * float(r["Average Content Size"]) for r in rows)
        pct = {q: float(rows[0][q]) for q in ("50%", "95%", "99%")}  # one name ("rerank") per type
        lines.append(f"| {kind} | {requests} | {fails} | {rps:.2f} | {pps:.1f} | {pct['50%']:.0f} | "
                     f"{pct['95%']:.0f} | {pct['99%']:.0f} |")
    total = next((r for r in stats if r["Name"] == "Aggregated"), None)
    if total:
        pps = sum(float(r["Requests/s"]) * float(r["Average Content Size"]) for rows in by_type.values() for r in rows)
        lines.append(f"| **all** | {total['Request Count']} | {total['Failure Count']} | "
                     f"{float(total['Requests/s']):.2f} | {pps:.1f} | {float(total['50%']):.0f} | "
                     f"{float(total['95%']):.0f} | {float(total['99%']):.0f} |")
    kinds = Counter()
    for row in failures:
        kinds[failure_kind(row["Error"])] += int(row["Occurrences"])
    unexpected = sum(n for kind, n in kinds.items() if kind not in allowed)
    lines += ["", "## Failures by kind", ""]
    lines += [f"- {kind}: {n}{'' if kind not in allowed else ' (allowed)'}" for kind, n in kinds.most_common()] or ["- none"]
    return "\n".join(lines) + "\n", unexpected


def plot(prefix: Path, out_dir: Path) -> list[Path]:
    """Latency percentiles and throughput over time, from Locust's full stats history."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_rows(prefix.with_name(prefix.name + "_stats_history.csv")) if r["Name"] == "Aggregated"]
    if not rows:
        return []
    t0 = int(rows[0]["Timestamp"])
    t = [int(r["Timestamp"]) - t0 for r in rows]

    def series(key: str) -> list[float]:
        return [float(r[key]) if r[key] not in ("", "N/A") else float("nan") for r in rows]

    paths = []
    fig, ax = plt.subplots(figsize=(8, 4))
    for q in ("50%", "95%", "99%"):
        ax.plot(t, series(q), label=f"p{q[:-1]}")
    ax.set(xlabel="seconds", ylabel="latency (ms)", title="Latency percentiles (all requests)")
    ax.legend()
    ax.grid(alpha=0.3)
    paths.append(out_dir / "latency.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(t, series("Requests/s"), label="requests/s")
    ax.plot(t, series("Failures/s"), label="failures/s")
    ax.set(xlabel="seconds", ylabel="per second", title="Throughput")
    ax2 = ax.twinx()
    ax2.plot(t, series("User Count"), color="grey", linestyle=":", label="users")
    ax2.set_ylabel("users")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    paths.append(out_dir / "throughput.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def run_locust(cmd: list[str], hard_limit_s: float, exit_grace_s: float = 15.0) -> bool:
    """Run Locust, echoing its output. gRPC can keep Locust from exiting after its last report
    (seen after failed RPCs under gevent): once it has logged "Shutting down", it gets
    ``exit_grace_s`` to exit and is then killed. False only when it never finished its run."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True)
    finished = threading.Event()

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            sys.stdout.write(line)
            if "Shutting down (exit code" in line:
                finished.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    deadline = time.monotonic() + hard_limit_s
    while proc.poll() is None and time.monotonic() < deadline:
        if finished.wait(1.0):
            try:
                proc.wait(timeout=exit_grace_s)
            except subprocess.TimeoutExpired:
                print(f"locust did not exit {exit_grace_s:.0f}s after its report; killing it", flush=True)
            break
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    reader.join(5)
    return finished.is_set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=parse_duration, default=parse_duration("60s"))
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--spawn-rate", type=float, default=8.0)
    parser.add_argument("--user-classes", default=",".join(USER_CLASSES))
    parser.add_argument("--grpc-url", default=f"localhost:{DEFAULT_PORTS.grpc}", help="Triton gRPC")
    parser.add_argument("--http-url", default=f"localhost:{DEFAULT_PORTS.triton_http}", help="Triton's KServe HTTP")
    parser.add_argument("--gateway-url", default=f"http://localhost:{DEFAULT_PORTS.rest}", help="the REST API")
    parser.add_argument("--repository", default="build/model_repository",
                        help="started when no server answers at --grpc-url")
    parser.add_argument("--reports", default="build/reports")
    parser.add_argument("--allow-failures", default="", help="failure kinds that do not fail the run")
    parser.add_argument("locust_args", nargs="*", help="passed to locust (after --), e.g. --passages 10,50")
    args = parser.parse_args(argv)

    out = Path(args.reports) / time.strftime("loadtest-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    prefix = out / "locust"
    with contextlib.ExitStack() as stack:
        grpc_url, http_url, gateway_url = args.grpc_url, args.http_url, args.gateway_url
        if not server_ready(grpc_url):
            from rerank_serving.stack import ServingStack

            server = stack.enter_context(ServingStack(args.repository, log_dir=out, gateway_args=["--no-access-log", "--no-cache"]))
            grpc_url, http_url, gateway_url = server.grpc_url, server.triton_http_url, server.rest_url
        cmd = [
            str(Path(sys.executable).with_name("locust")), "-f", str(LOCUSTFILE), "--headless",
            "--users", str(args.users), "--spawn-rate", str(args.spawn_rate), "--run-time", f"{args.duration}s",
            "--stop-timeout", "10", "--csv", str(prefix), "--csv-full-history", "--html", str(out / "report.html"),
            "--grpc-url", grpc_url, "--http-url", http_url, "--gateway-url", gateway_url, "--only-summary",
            *args.locust_args,
            *args.user_classes.split(","),
        ]
        print(" ".join(cmd), flush=True)
        if not run_locust(cmd, hard_limit_s=args.duration + 120):
            print("locust overran its time limit; killed", file=sys.stderr)
            return 3
    summary, unexpected = summarize(prefix, args.duration, args.users,
                                    {k for k in args.allow_failures.split(",") if k})
    (out / "summary.md").write_text(summary)
    plots = plot(prefix, out)
    print(summary)
    print(f"report: {out} ({', '.join(p.name for p in plots)})")
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())

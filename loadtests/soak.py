"""``make soak``: Locust at saturation for a long run, with the memory of every server process sampled.

Starts the stack (tritonserver and the REST gateway) on --repository and runs real Locust, headless,
through the gateway (NIM ``/v1/ranking``) and over gRPC (the client library) at once, for
--duration. Every --sample-s seconds it records the resident memory (RSS) of tritonserver, each
python-backend stub and the gateway's processes. Writes ``build/reports/soak-<time>/``: Locust's
CSV, ``memory.csv``, ``memory.png`` and ``report.md``.

It passes (exit 0) when Locust saw no unexpected failure (every failure is unexpected unless its kind
is in --allow-failures) and the total RSS grew by less than --max-growth after the warm-up. Growth
compares floors: the lowest of the last three samples against the lowest of the first three after
warm-up. The engine's memory rises and falls with the shape of each run (a long run takes hundreds
of MB and gives them back), so single samples swing; a leak raises the floor. OpenVINO (the default
CPU engine) also caches kernels per input shape (up to `openvino_shape_cache`, 500): its RSS climbs
while new shapes arrive and levels off as the cache fills; give short runs a warm-up of 60 s.

    python -m loadtests.soak --duration 10m --repository build/model_repository
"""

from __future__ import annotations

import argparse
import csv
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from rerank_serving.stack import ServingStack
from rerank_serving.stubs import python_stubs

from .run_loadtest import LOCUSTFILE, parse_duration, run_locust, summarize

SOAK_USERS = "RestGatewayUser,GrpcClientUser"
#: The mixed workload; 4 REST users x 50 passages stay within the default admission budget (256),
#: so every request does real work and any failure is unexpected.
SOAK_WORKLOAD = ("--passages", "10,50")
WINDOW = 3  # samples averaged at each end of the growth comparison


@dataclass
class MemoryLog:
    """RSS samples, bytes, per process name (tritonserver, stub instance names, gateway)."""

    times: list[float] = field(default_factory=list)
    rss: list[dict[str, int]] = field(default_factory=list)

    def sample(self, t: float, stack: ServingStack) -> None:
        row: dict[str, int] = {}
        triton = stack.triton.process
        if triton is not None and triton.poll() is None:
            row["tritonserver"] = _rss(triton.pid)
            for stub in python_stubs(triton.pid):
                row[f"stub {stub.name}"] = _rss(stub.pid)
        gateway = stack.gateway.process
        if gateway is not None and gateway.poll() is None:
            row["gateway"] = _rss(gateway.pid, with_children=True)
        self.times.append(t)
        self.rss.append(row)

    @property
    def names(self) -> list[str]:
        return sorted({name for row in self.rss for name in row})

    def total(self, i: int) -> int:
        return sum(self.rss[i].values())


def _rss(pid: int, with_children: bool = False) -> int:
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)] if with_children else [proc]
        return sum(p.memory_info().rss for p in procs)
    except psutil.NoSuchProcess:
        return 0


@dataclass(frozen=True)
class Growth:
    baseline: float  # bytes, the lowest of the first WINDOW samples after warm-up
    end: float  # bytes, the lowest of the last WINDOW samples
    ratio: float  # end / baseline - 1


def growth(values: list[float]) -> Growth | None:
    """Growth of the floor from the first to the last ``WINDOW`` values (None when there are too few)."""
    if len(values) < 2 * WINDOW or not min(values[:WINDOW]):
        return None
    base, end = min(values[:WINDOW]), min(values[-WINDOW:])
    return Growth(base, end, end / base - 1)


def after_warmup(log: MemoryLog, warmup_s: float) -> list[int]:
    return [i for i, t in enumerate(log.times) if t >= warmup_s]


def memory_report(log: MemoryLog, warmup_s: float) -> tuple[list[str], Growth | None]:
    kept = after_warmup(log, warmup_s)
    lines = ["| process | RSS floor after warm-up | RSS floor at the end | growth |", "|---|---|---|---|"]
    for name in [*log.names, "total"]:
        values = [float(log.total(i) if name == "total" else log.rss[i].get(name, 0)) for i in kept]
        g = growth(values)
        if g is not None:
            label = f"**{name}**" if name == "total" else name
            lines.append(f"| {label} | {g.baseline / 2**20:.0f} MiB | {g.end / 2**20:.0f} MiB | {g.ratio:+.1%} |")
    return lines, growth([float(log.total(i)) for i in kept])


def write_memory(log: MemoryLog, out: Path, warmup_s: float) -> Path:
    with open(out / "memory.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["seconds", *log.names])
        for t, row in zip(log.times, log.rss):
            writer.writerow([f"{t:.1f}", *(row.get(n, 0) for n in log.names)])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name in log.names:
        ax.plot(log.times, [row.get(name, 0) / 2**20 for row in log.rss], label=name)
    ax.plot(log.times, [log.total(i) / 2**20 for i in range(len(log.times))], label="total", color="black")
    ax.axvline(warmup_s, color="grey", linestyle=":", label="end of warm-up")
    ax.set(xlabel="seconds", ylabel="RSS (MiB)", title="Resident memory of the server processes")
    ax.legend(fontsize="small", loc="center right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "memory.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=parse_duration, default=parse_duration("10m"))
    p.add_argument("--users", type=int, default=8, help="Locust users, split over the REST and gRPC user classes")
    p.add_argument("--repository", default="build/model_repository")
    p.add_argument("--reports", default="build/reports")
    p.add_argument("--sample-s", type=float, default=10.0)
    p.add_argument("--warmup-s", type=float, help="default: a fifth of the run, at most 120 s")
    p.add_argument("--max-growth", type=float, default=0.05, help="allowed RSS growth after warm-up")
    p.add_argument("--allow-failures", default="", help="failure kinds that do not fail the soak")
    p.add_argument("locust_args", nargs="*", default=list(SOAK_WORKLOAD),
                   help=f"passed to locust (after --); default {' '.join(SOAK_WORKLOAD)}")
    args = p.parse_args(argv)
    warmup_s = args.warmup_s if args.warmup_s is not None else min(120.0, args.duration / 5)

    out = Path(args.reports) / time.strftime("soak-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    prefix = out / "locust"
    log = MemoryLog()
    with ServingStack(args.repository, log_dir=out, gateway_args=["--no-access-log", "--no-cache"]) as stack:
        stop = threading.Event()
        started = time.monotonic()

        def sampler() -> None:
            while True:
                log.sample(time.monotonic() - started, stack)
                if stop.wait(args.sample_s):
                    return

        thread = threading.Thread(target=sampler, daemon=True)
        thread.start()
        cmd = [str(Path(sys.executable).with_name("locust")), "-f", str(LOCUSTFILE), "--headless",
               "--users", str(args.users), "--spawn-rate", str(args.users), "--run-time", f"{args.duration}s",
               "--stop-timeout", "10", "--csv", str(prefix), "--csv-full-history", "--only-summary",
               "--grpc-url", stack.grpc_url, "--http-url", stack.triton_http_url, "--gateway-url", stack.rest_url,
               *args.locust_args, *SOAK_USERS.split(",")]
        print(" ".join(cmd), flush=True)
        finished = run_locust(cmd, hard_limit_s=args.duration + 120)
        stop.set()
        thread.join()
        log.sample(time.monotonic() - started, stack)
    summary, unexpected = summarize(prefix, args.duration, args.users, {k for k in args.allow_failures.split(",") if k})
    lines, total = memory_report(log, warmup_s)
    write_memory(log, out, warmup_s)
    grew = total is None or total.ratio >= args.max_growth
    passed = finished and not unexpected and not grew
    verdict = [f"# Soak: {'PASS' if passed else 'FAIL'}", "",
               f"{args.duration} s, {args.users} Locust users ({SOAK_USERS}), RSS sampled every {args.sample_s:g} s, "
               f"warm-up {warmup_s:g} s.", "",
               f"- unexpected failures: {unexpected} (must be 0)",
               f"- total RSS growth after warm-up: "
               f"{'too few samples' if total is None else f'{total.ratio:+.1%}'} (must be under {args.max_growth:.0%})",
               *([] if finished else ["- Locust did not finish its run"]), "", "## Memory (memory.png, memory.csv)", "",
               *lines, "", summary.replace("# Load test", "## Load")]
    (out / "report.md").write_text("\n".join(verdict) + "\n")
    print("\n".join(verdict))
    print(f"report: {out}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())

"""Overload: what clients get at 2x and 5x the sustainable load, with and without admission control.

``--workload mixed`` makes one request in five carry long passages (300-1,000 words each, about ten
times the tokens of the short ones): the case where a budget of passages alone admits seconds of work,
and the gateway's budget of tokens in flight matters. ``--modes`` picks the gateway's admission per run:
``on`` (both budgets, the default), ``passages`` (the passage budget alone), ``off``. The gateway's score
cache is off in every run: the payloads repeat, and the cache would answer them without the engine.

Arrivals are open loop (Poisson at a fixed rate): real clients do not wait for each other's answers,
so a closed-loop tool (Locust's users) would slow down with the server and hide the queue. First the
sustainable load is measured closed loop (``--clients`` callers back to back); then each phase
offers ``factor`` x that rate of NIM ``/v1/ranking`` requests for ``--phase-s`` seconds, once with the
gateway's admission budget and once with ``--no-admission``, on the same stack build. Every request
is waited for (up to the gateway's 60 s deadline, then 504).

    python -m loadtests.overload --repository build/model_repository --label small
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import re
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

from loadtests.latency import percentiles
from rerank_serving.stack import ServingStack
from rerank_build.textgen import random_text

logger = logging.getLogger(__name__)


@dataclass
class Outcome:
    status: int  # HTTP status; 0: no answer (connection error or client timeout)
    latency_s: float
    tokens: int = 0  # the answer's usage.total_tokens (200s only)


#: The gateway's flags for each admission mode (``tokens``: a token budget of ``--admission-tokens``).
MODES = {"on": [], "passages": ["--admission-tokens", str(10**12)], "tokens": [], "off": ["--no-admission"]}


@dataclass
class PhaseReport:
    admission: str  # a key of MODES
    factor: float
    offered_rps: float
    requests: int
    ok: int
    rejected_503: int
    other_failures: int
    p50_all_s: float
    p99_all_s: float
    p50_ok_s: float
    p99_ok_s: float
    p99_rejected_s: float
    goodput_pairs_s: float
    goodput_tokens_s: float = 0.0  # tokens of the 200 answers per second
    engine_tokens_s: float = 0.0  # tokens the engine computed per second (rerank_engine_tokens_total, useful)


def body(passages: int, seed: int, long: bool = False) -> dict:
    rng = random.Random(seed)
    words = (300, 1000) if long else (20, 60)
    return {"query": {"text": random_text(rng, 10, ("en",))},
            "passages": [{"text": random_text(rng, rng.randint(*words), ("en",))} for _ in range(passages)]}


def payloads_for(workload: str, passages: int, seed: int) -> list[dict]:
    """32 request bodies: all short, or (mixed) every fifth one long."""
    return [body(passages, seed + i, long=workload == "mixed" and i % 5 == 4) for i in range(32)]


async def _post(session: aiohttp.ClientSession, url: str, payload: dict) -> Outcome:
    started = time.perf_counter()
    try:
        async with session.post(url, json=payload) as response:
            raw = await response.read()
            tokens = json.loads(raw)["usage"]["total_tokens"] if response.status == 200 else 0
            return Outcome(response.status, time.perf_counter() - started, tokens)
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError):
        return Outcome(0, time.perf_counter() - started)


async def capacity(url: str, payloads: list[dict], clients: int, seconds: float) -> float:
    """Requests per second that ``clients`` back-to-back callers get: the sustainable load."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def caller(i: int, session: aiohttp.ClientSession) -> None:
        nonlocal done
        k = i
        while time.perf_counter() < deadline:
            if (await _post(session, url, payloads[k % len(payloads)])).status == 200:
                done += 1
            k += clients

    started = time.perf_counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        await asyncio.gather(*(caller(i, session) for i in range(clients)))
    return done / (time.perf_counter() - started)


async def open_loop(url: str, payloads: list[dict], rate: float, seconds: float, seed: int) -> tuple[list[Outcome], float]:
    """Poisson arrivals at ``rate`` per second for ``seconds``; every answer is waited for."""
    rng = random.Random(seed)
    tasks = []
    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=0)  # no client-side queue: the server sees every arrival
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        at = 0.0
        while at < seconds:
            delay = started + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_post(session, url, payloads[len(tasks) % len(payloads)])))
            at += rng.expovariate(rate)
        outcomes = list(await asyncio.gather(*tasks))
    return outcomes, time.perf_counter() - started


def _percentiles(values: list[float]) -> dict[str, float]:
    """p50/p99 (``latency.percentiles``), NaN for an empty list (no request of that kind)."""
    return percentiles(values) if values else {"p50": float("nan"), "p99": float("nan")}


def engine_counters(metrics_port: int) -> dict[str, float]:
    """Triton's counters of the engine: useful tokens computed, requests run, dropped by Triton's queue
    at their timeout, dropped by the engine at their deadline, and total queue time (us)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    patterns = {"tokens": r'rerank_engine_tokens_total\{kind="useful"\}',
                "ran": r'nv_inference_request_success\{model="engine",[^}]*\}',
                "dropped": r'nv_inference_request_failure\{model="engine",reason="REJECTED",[^}]*\}',
                "queue_us": r'nv_inference_queue_duration_us\{model="engine",[^}]*\}',
                "expired": r'rerank_engine_dropped_requests_total\{reason="deadline"\}'}
    out = {}
    for name, pattern in patterns.items():
        found = re.search(pattern + r" ([0-9.e+]+)", text)
        out[name] = float(found.group(1)) if found else (0.0 if name == "expired" else float("nan"))
    return out


def summarize(admission: str, factor: float, rate: float, outcomes: list[Outcome], wall_s: float,
              passages: int, engine_tokens: float = 0.0) -> PhaseReport:
    ok = [o.latency_s for o in outcomes if o.status == 200]
    rejected = [o.latency_s for o in outcomes if o.status == 503]
    every, good, refused = (_percentiles(v) for v in ([o.latency_s for o in outcomes], ok, rejected))
    return PhaseReport(admission, factor, round(rate, 2), len(outcomes), len(ok), len(rejected),
                       len(outcomes) - len(ok) - len(rejected), every["p50"], every["p99"], good["p50"], good["p99"],
                       refused["p99"], len(ok) * passages / wall_s,
                       sum(o.tokens for o in outcomes if o.status == 200) / wall_s, engine_tokens / wall_s)


def table(reports: list[PhaseReport], capacity_rps: float, passages: int) -> str:
    lines = [f"Sustainable load: {capacity_rps:.2f} requests/s of {passages} passages "
             f"({capacity_rps * passages:.0f} pairs/s), measured closed loop.", "",
             "| admission | load | offered req/s | requests | 200 | 503 (rejected share) | other failures | "
             "p50 / p99 all | p50 / p99 of 200s | p99 of 503s | goodput pairs/s | goodput tokens/s | "
             "engine tokens/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        share = r.rejected_503 / r.requests if r.requests else 0.0
        lines.append(f"| {r.admission} | {r.factor:g}x | {r.offered_rps:.2f} | {r.requests} | "
                     f"{r.ok} | {r.rejected_503} ({share:.0%}) | {r.other_failures} | "
                     f"{r.p50_all_s:.2f} / {r.p99_all_s:.2f} s | {r.p50_ok_s:.2f} / {r.p99_ok_s:.2f} s | "
                     f"{r.p99_rejected_s * 1000:.0f} ms | {r.goodput_pairs_s:.0f} | {r.goodput_tokens_s:,.0f} | "
                     f"{r.engine_tokens_s:,.0f} |")
    return "\n".join(lines)


def run(repository: Path, passages: int, factors: list[float], phase_s: float, clients: int,
        capacity_s: float, log_dir: Path, seed: int = 0, workload: str = "short",
        modes: tuple[str, ...] = ("on", "off")) -> tuple[float, list[PhaseReport]]:
    payloads = payloads_for(workload, passages, seed)
    reports: list[PhaseReport] = []
    capacity_rps = 0.0
    for n, admission in enumerate(modes):  # a mode may repeat: runs interleaved on a shared machine
        with ServingStack(repository, log_dir=log_dir / f"admission-{admission}-{n}",
                          gateway_args=["--no-access-log", "--no-cache", *MODES[admission]]) as stack:
            url = stack.rest_url + "/v1/ranking"
            asyncio.run(capacity(url, payloads, clients, 3.0))  # warm-up
            if not capacity_rps:
                capacity_rps = asyncio.run(capacity(url, payloads, clients, capacity_s))
                logger.info("sustainable load: %.2f requests/s", capacity_rps)
            for factor in factors:
                rate = factor * capacity_rps
                logger.info("admission %s, %gx: %.2f requests/s for %.0f s", admission, factor, rate, phase_s)
                before = engine_counters(stack.ports.metrics)
                outcomes, wall = asyncio.run(open_loop(url, payloads, rate, phase_s, seed))
                time.sleep(1.0)  # whatever still runs in the engine finishes and is counted
                spent = engine_counters(stack.ports.metrics)["tokens"] - before["tokens"]
                reports.append(summarize(admission, factor, rate, outcomes, wall, passages, spent))
    return capacity_rps, reports


def write_report(stem: Path, text: str, capacity_rps: float, passages: int, phases: list) -> None:
    """``stem``.md (the table) and ``stem``.json (the phases as data) of an open-loop run; the table printed."""
    stem.parent.joinpath(stem.name + ".md").write_text(text)  # not with_suffix: a label may hold a dot
    stem.parent.joinpath(stem.name + ".json").write_text(json.dumps(
        {"capacity_rps": capacity_rps, "passages": passages, "phases": [asdict(r) for r in phases]}, indent=2))
    print(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", type=Path, default=Path("build/model_repository"))
    p.add_argument("--label", default="small")
    p.add_argument("--passages", type=int, default=10, help="passages per request")
    p.add_argument("--factors", default="2,5", help="offered load as multiples of the sustainable load")
    p.add_argument("--phase-s", type=float, default=30.0, help="seconds of arrivals per phase")
    p.add_argument("--clients", type=int, default=4, help="closed-loop callers when measuring the sustainable load")
    p.add_argument("--capacity-s", type=float, default=15.0)
    p.add_argument("--out", type=Path, default=Path("build/reports/overload"))
    p.add_argument("--workload", choices=["short", "mixed"], default="short",
                   help="mixed: every fifth request carries long passages (300-1,000 words)")
    p.add_argument("--modes", default="on,off",
                   help=f"admission per run, of {', '.join(MODES)}; repeat to interleave, e.g. passages,tokens,passages,tokens")
    p.add_argument("--admission-tokens", type=int, default=32768, help="the token budget of the 'tokens' mode")
    args = p.parse_args(argv)
    MODES["tokens"] = ["--admission-tokens", str(args.admission_tokens)]
    modes = tuple(args.modes.split(","))
    if set(modes) - set(MODES):
        p.error(f"--modes takes {', '.join(MODES)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    capacity_rps, reports = run(args.repository, args.passages, [float(f) for f in args.factors.split(",")],
                                args.phase_s, args.clients, args.capacity_s, args.out / "logs",
                                workload=args.workload, modes=modes)
    text = f"## Overload, {args.label} ({args.workload} workload)\n\n" + table(reports, capacity_rps, args.passages) + "\n"
    write_report(args.out / f"overload-{args.label}", text, capacity_rps, args.passages, reports)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Deadlines under overload: does work nobody waits for still cost engine time?

Repositories built from the same checkpoint, served in turn (interleaved, as the machine is shared):
``steps``, the default (the tokenizer and the engine drop a request that cannot meet its deadline,
rerank_contract/deadline.py); ``off``, built with ``--no-deadlines`` (Triton computes everything it
was sent; the gateway still answers 504 at the deadline); optionally ``queue_policy``, built with
``--request-timeouts --no-deadlines`` (Triton's own queue policy alone). For each: the sustainable
load is measured closed loop (``overload.capacity``), then ``--factor`` x that rate of NIM
``/v1/ranking`` requests arrive open loop (Poisson) for ``--phase-s`` seconds, each carrying a
deadline in the gateway's deadline header, with the gateway's admission budget on, off, or both.
Per phase: answers by status, goodput (pairs answered 200, all within their deadline by
construction: past it the gateway answers 504), and the engine's own count of the tokens it
computed (``rerank_engine_tokens_total{kind="useful"}`` on Triton's metrics port) beside the tokens
of the 200 answers: the difference is engine time spent on requests nobody got.

    rerank-build repository --checkpoint build/checkpoints/small --target cpu --out build/model_repository
    rerank-build repository --checkpoint build/checkpoints/small --target cpu --no-deadlines \\
        --out build/model_repository_nodeadlines
    python -m loadtests.deadlines --repository build/model_repository \\
        --off-repository build/model_repository_nodeadlines --label small --admission both
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from loadtests.overload import body, capacity, engine_counters, write_report
from rerank_serving.stack import ServingStack

logger = logging.getLogger(__name__)
HEADER = "x-envoy-expected-rq-timeout-ms"


@dataclass
class Phase:
    variant: str  # steps (our deadline checks), off, queue_policy (Triton's alone)
    factor: float
    offered_rps: float
    deadline_ms: int
    requests: int
    ok: int
    expired_504: int
    rejected_503: int
    other: int
    goodput_pairs_s: float
    engine_tokens: float  # computed by the engine during the phase (useful tokens)
    answered_tokens: float  # tokens of the 200 answers
    wasted_share: float  # (engine - answered) / engine: engine work nobody got
    engine_dropped: float  # engine requests Triton's queue dropped at their timeout (REJECTED)
    engine_queue_ms: float  # mean wait in the engine's queue of the requests it ran
    engine_expired: float  # requests the engine itself dropped (rerank_engine_dropped_requests_total)
    admission: bool = True


async def _post(session: aiohttp.ClientSession, url: str, payload: dict, deadline_ms: int) -> tuple[int, int]:
    """(status, tokens answered); status 0: no answer."""
    try:
        async with session.post(url, json=payload, headers={HEADER: str(deadline_ms)}) as response:
            data = await response.json(content_type=None)
            tokens = data["usage"]["total_tokens"] if response.status == 200 else 0
            return response.status, tokens
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        return 0, 0


async def open_loop(url: str, payloads: list[dict], rate: float, seconds: float, deadline_ms: int,
                    seed: int) -> tuple[list[tuple[int, int]], float]:
    import random

    rng = random.Random(seed)
    tasks = []
    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=120)) as session:
        at = 0.0
        while at < seconds:
            delay = started + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_post(session, url, payloads[len(tasks) % len(payloads)], deadline_ms)))
            at += rng.expovariate(rate)
        outcomes = list(await asyncio.gather(*tasks))
    return outcomes, time.perf_counter() - started


def run(repositories: dict[str, Path], passages: int, factor: float, phase_s: float, deadline_ms: int,
        clients: int, capacity_s: float, log_dir: Path, rounds: int, admissions: tuple[bool, ...] = (True,),
        seed: int = 0) -> tuple[float, list[Phase]]:
    payloads = [body(passages, seed + i) for i in range(32)]
    phases: list[Phase] = []
    capacity_rps = 0.0
    for round_ in range(rounds):
        for admission in admissions:
            for variant, repository in repositories.items():  # interleaved, as the machine is shared
                gateway_args = ["--no-access-log", "--no-cache", *([] if admission else ["--no-admission"])]
                with ServingStack(repository, log_dir=log_dir / f"{variant}-{'adm' if admission else 'noadm'}-{round_}",
                                  gateway_args=gateway_args) as stack:
                    url = stack.rest_url + "/v1/ranking"
                    asyncio.run(capacity(url, payloads, clients, 3.0))  # warm-up
                    if not capacity_rps:
                        capacity_rps = asyncio.run(capacity(url, payloads, clients, capacity_s))
                        logger.info("sustainable load: %.2f requests/s", capacity_rps)
                    rate = factor * capacity_rps
                    before = engine_counters(stack.ports.metrics)
                    outcomes, wall = asyncio.run(open_loop(url, payloads, rate, phase_s, deadline_ms, seed + round_))
                    time.sleep(1.0)  # whatever still runs in the engine finishes and is counted
                    after = engine_counters(stack.ports.metrics)
                delta = {k: after[k] - before[k] for k in after}
                spent = delta["tokens"]
                ok = [t for s, t in outcomes if s == 200]
                answered = float(sum(ok))
                statuses = [s for s, _ in outcomes]
                phases.append(Phase(variant, factor, round(rate, 2), deadline_ms, len(outcomes), len(ok),
                                    statuses.count(504), statuses.count(503),
                                    len(outcomes) - len(ok) - statuses.count(504) - statuses.count(503),
                                    len(ok) * passages / wall, spent, answered,
                                    (spent - answered) / spent if spent else 0.0, delta["dropped"],
                                    delta["queue_us"] / 1000 / delta["ran"] if delta["ran"] else 0.0,
                                    delta["expired"], admission))
                logger.info("%s", phases[-1])
    return capacity_rps, phases


def table(phases: list[Phase], capacity_rps: float, passages: int) -> str:
    lines = [f"Sustainable load: {capacity_rps:.2f} requests/s of {passages} passages, measured closed loop.", "",
             "| deadlines | admission | load | deadline | requests | 200 | 504 | 503 | goodput pairs/s | "
             "engine tokens | tokens answered | engine work wasted | dropped by the engine | dropped in its queue "
             "| engine queue, mean |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in phases:
        lines.append(f"| {p.variant} | {'on' if p.admission else 'off'} | {p.factor:g}x | "
                     f"{p.deadline_ms} ms | {p.requests} | {p.ok} | {p.expired_504} | {p.rejected_503} | "
                     f"{p.goodput_pairs_s:.0f} | {p.engine_tokens:.0f} | {p.answered_tokens:.0f} | {p.wasted_share:.0%} | "
                     f"{p.engine_expired:.0f} | {p.engine_dropped:.0f} | {p.engine_queue_ms:.0f} ms |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", type=Path, default=Path("build/model_repository"),
                   help="the default repository: deadlines checked by the tokenizer and the engine")
    p.add_argument("--off-repository", type=Path, default=Path("build/model_repository_nodeadlines"),
                   help="built with --no-deadlines: the baseline")
    p.add_argument("--timeouts-repository", type=Path, default=None,
                   help="optional, built with --request-timeouts --no-deadlines: Triton's queue policy alone")
    p.add_argument("--label", default="small")
    p.add_argument("--passages", type=int, default=10)
    p.add_argument("--factor", type=float, default=2.0)
    p.add_argument("--deadline-ms", type=int, default=1000)
    p.add_argument("--phase-s", type=float, default=30.0)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--admission", choices=["on", "off", "both"], default="on",
                   help="the gateway's admission budget; off: overload lengthens Triton's queues")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--capacity-s", type=float, default=15.0)
    p.add_argument("--out", type=Path, default=Path("build/reports/deadlines"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    repositories = {"off": args.off_repository, "steps": args.repository}
    if args.timeouts_repository:
        repositories["queue_policy"] = args.timeouts_repository
    admissions = {"on": (True,), "off": (False,), "both": (True, False)}[args.admission]
    capacity_rps, phases = run(repositories, args.passages, args.factor, args.phase_s, args.deadline_ms, args.clients,
                               args.capacity_s, args.out / "logs", args.rounds, admissions)
    text = f"## Deadlines under overload, {args.label}\n\n" + table(phases, capacity_rps, args.passages) + "\n"
    write_report(args.out / f"deadlines-{args.label}", text, capacity_rps, args.passages, phases)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

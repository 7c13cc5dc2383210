"""What ``truncate=CHUNK`` costs against ``END``, measured in one run on one repository.

The workload is the project's generator (seeded, multilingual) with 10 % of the passages 2-4 x over
``max_sequence_length`` and the rest well under it. The same requests are sent with END and with
CHUNK through the client library over gRPC, at concurrency 1 and 4, interleaved block by block
(a block: as many requests as the concurrency, sent at once) so that drift hits both. It reports pairs/s, the tokens the engine scored, and how many passages
CHUNK gave a better score than END. It also shows one long passage's score per window (scored by
calling the engine model with each window) next to the ensemble's CHUNK answer.

The repository is assembled here with a small ``max_sequence_length`` (default 512) so that windows
cost seconds, not minutes, on a CPU; the ratio between the modes, not the absolute rate, is the point.

    python -m loadtests.chunk_cost --checkpoint build/checkpoints/small --label small
"""

from __future__ import annotations

import argparse
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from loadtests.workload import Request, Workload, WorkloadSpec
from rerank_build.repository import RepositorySettings, build_repository
from rerank_serving.server import TritonServer
from rerank_client import RerankClient
from rerank_client.tensors import DEFAULT_ENSEMBLE_NAME, infer_once, protocol_module
from rerank_contract import prompt as rp

logger = logging.getLogger(__name__)


def timed(url: str, requests: list, truncate: str, concurrency: int) -> tuple[float, list]:
    """Seconds for all requests (``concurrency`` at a time) and their results, in request order."""
    with RerankClient(url, "grpc", truncate=truncate, timeout_s=600) as client:
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(lambda r: client.rerank(r.query, list(r.passages)), requests))
        return time.perf_counter() - started, results


def per_window(url: str, tokenizer_dir: Path, max_length: int, query: str, passage: str) -> list[float]:
    """The engine's logit for each CHUNK window of one pair, each window sent alone."""
    encoder = rp.PairEncoder(rp.load_tokenizer(str(tokenizer_dir)), max_length=max_length)
    module = protocol_module("grpc")
    client = module.InferenceServerClient(url)
    try:
        scores = []
        for row in encoder.windows(query, [passage], "CHUNK")[0]:
            ids = np.array([row], dtype=np.int32)
            inputs = [module.InferInput("input_ids", list(ids.shape), "INT32"),
                      module.InferInput("attention_mask", list(ids.shape), "INT32")]
            inputs[0].set_data_from_numpy(ids)
            inputs[1].set_data_from_numpy(np.ones_like(ids))
            scores.append(float(client.infer("engine", inputs).as_numpy("logits")[0, 0]))
        return scores
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=Path("build/checkpoints/small"))
    p.add_argument("--label", default="small")
    p.add_argument("--max-sequence-length", type=int, default=512)
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--passages", type=int, default=10)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", type=Path, default=Path("build/reports/chunk-cost"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    n = args.max_sequence_length
    # Exactly one passage in ten is long: 2-4 x max_sequence_length; the others 30 to n/2 tokens.
    short = Workload(WorkloadSpec(seed=args.seed, length_mix=((1.0, 30, n // 2),))).take(args.requests, args.passages)
    long = Workload(WorkloadSpec(seed=args.seed + 1, length_mix=((1.0, 2 * n, 4 * n),))).take(args.requests, 1)
    requests = [Request(r.query, tuple(p if k % 10 else x.passages[0] for k, p in enumerate(r.passages)))
                for r, x in zip(short, long)]
    settings = RepositorySettings(max_sequence_length=n, max_rows=64, engine_max_batch_size=64,
                                  preferred_batch_sizes=(8, 16, 32))
    repo = build_repository(args.checkpoint, args.out / "repository", settings, force=True)
    encoder = rp.PairEncoder(rp.load_tokenizer(str(args.checkpoint)), max_length=10**9)
    lengths = [len(ids) for r in requests for ids in encoder.encode(r.query, list(r.passages))]
    long_share = sum(length > n for length in lengths) / len(lengths)
    lines = [f"## CHUNK against END, {args.label}, max_sequence_length {n}", "",
             f"{len(requests)} requests x {args.passages} passages (seed {args.seed}); {long_share:.0%} of the "
             f"passages (one per request) are over {n} tokens (2-4 x), the rest 30-{n // 2}. Client library over gRPC, CPU "
             "repository, both modes on the same server, interleaved.", "",
             "| concurrency | mode | seconds | pairs/s | tokens scored | windows | long passages CHUNK scored higher |",
             "|---|---|---|---|---|---|---|"]
    with TritonServer(repo, log_path=args.out / "tritonserver.log") as server:
        url = server.grpc_url
        timed(url, requests[:2], "CHUNK", 1)  # warm-up
        for concurrency in (1, 4):
            seconds = {"END": 0.0, "CHUNK": 0.0}
            results: dict[str, list] = {"END": [], "CHUNK": []}
            for start in range(0, len(requests), concurrency):  # a block of `concurrency` requests at once
                block = requests[start:start + concurrency]
                for mode in ("END", "CHUNK"):
                    s, r = timed(url, block, mode, concurrency)
                    seconds[mode] += s
                    results[mode] += r
            end_scores = {(k, x.index): x.logit for k, res in enumerate(results["END"]) for x in res}
            better = sum(x.chunks > 1 and x.logit > end_scores[(k, x.index)] + 1e-4
                         for k, res in enumerate(results["CHUNK"]) for x in res)
            pairs = len(lengths)
            for mode in ("END", "CHUNK"):
                tokens = sum(x.token_count for res in results[mode] for x in res)
                windows = sum(x.chunks for res in results[mode] for x in res)
                lines.append(f"| {concurrency} | {mode} | {seconds[mode]:.1f} | {pairs / seconds[mode]:.1f} | "
                             f"{tokens} | {windows} | {better if mode == 'CHUNK' else '-'} |")
        # One long passage: its windows' scores, and what the ensemble answers.
        request = next(r for r in requests if any(len(ids) > n for ids in encoder.encode(r.query, list(r.passages))))
        passage = next(x for x, ids in zip(request.passages, encoder.encode(request.query, list(request.passages)))
                       if len(ids) > n)
        windows = per_window(url, args.checkpoint, n, request.query, passage)
        chunk = infer_once(url, "grpc", DEFAULT_ENSEMBLE_NAME, request.query, [passage], truncate="CHUNK")
        end = infer_once(url, "grpc", DEFAULT_ENSEMBLE_NAME, request.query, [passage], truncate="END")
    lines += ["", f"One passage of {len(encoder.encode(request.query, [passage])[0])} tokens: window logits "
              + ", ".join(f"{w:.4f}" for w in windows)
              + f"; ensemble CHUNK logit {float(chunk.logit[0]):.4f} ({int(chunk.chunks[0])} windows, "
              f"{int(chunk.token_count[0])} tokens); END logit {float(end.logit[0]):.4f}."]
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"chunk-cost-{args.label}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

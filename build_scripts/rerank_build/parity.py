"""Parity tool: does an implementation return the reference model's scores?

The reference (our PyTorch model, fp32) scores every pair alone, unpadded: the ground truth. The
candidate (ONNX Runtime on an exported model, or a served Triton endpoint) scores each query's
passages together, in one left-padded batch of mixed lengths, so padding bugs show up too. For every
query we print the max absolute and relative difference and whether the ranking agrees; the command
exits non-zero when any difference exceeds the tolerance or a ranking disagrees beyond ties.

Tolerances (documented in docs/build.md): fp32 1e-4 absolute; fp16 5e-2; bf16 0.1; fp8 1.0. "Rankings
agree" ignores swaps of passages whose reference logits are closer than twice the tolerance: each
score may move by up to the tolerance, so such a pair may swap within it.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from rerank_contract.prompt import PairEncoder, Truncate, left_pad, load_tokenizer
from rerank_contract.ranking import ranking_order

from .textgen import FIXED_CASES, Case, random_cases

logger = logging.getLogger(__name__)

#: Max abs logit difference allowed per dtype (the random presets' logits spread with std 4). fp8:
#: FP8 Q/DQ at every linear layer measured 0.79 (tiny) and 0.83 (small); the full preset misses it
#: (1.75; random weights, docs/gpu.md).
#: bf16-linear: the CPU engine's bf16 (OpenVINO, the linear layers in bf16, the rest in fp32) on an fp32
#: export; bf16 alone is a bf16 export computed in fp32 (0.055, 0.071).
TOLERANCES = {"fp32": 1e-4, "fp16": 5e-2, "bf16": 1e-1, "bf16-linear": 1e-1, "fp8": 1.0}
REL_FLOOR = 1e-3

# A scorer maps (query, passages, token rows) to logits in the passages' order, and optionally
# the token counts it saw (endpoints report theirs).
Scorer = Callable[[str, Sequence[str], list[list[int]]], "tuple[np.ndarray, np.ndarray | None]"]


@dataclass
class QueryResult:
    name: str
    n: int
    max_abs: float
    max_rel: float
    ranking_identical: bool
    ranking_agrees: bool  # identical up to reference ties within the tolerance
    tokens_match: bool = True


@dataclass
class ParityReport:
    tolerance: float
    results: list[QueryResult] = field(default_factory=list)

    @property
    def max_abs(self) -> float:
        return max((r.max_abs for r in self.results), default=0.0)

    @property
    def max_rel(self) -> float:
        return max((r.max_rel for r in self.results), default=0.0)

    @property
    def passed(self) -> bool:
        return all(r.max_abs <= self.tolerance and r.ranking_agrees and r.tokens_match for r in self.results)

    def lines(self) -> list[str]:
        out = [f"{'query':<10} {'n':>3} {'max_abs':>10} {'max_rel':>10}  ranking"]
        for r in self.results:
            rank = "identical" if r.ranking_identical else ("ties only" if r.ranking_agrees else "DIFFERENT")
            extra = "" if r.tokens_match else "  TOKEN COUNTS DIFFER"
            out.append(f"{r.name:<10} {r.n:>3} {r.max_abs:>10.3e} {r.max_rel:>10.3e}  {rank}{extra}")
        agree = sum(r.ranking_identical for r in self.results)
        out.append(
            f"overall: {len(self.results)} queries, {sum(r.n for r in self.results)} pairs, "
            f"max_abs {self.max_abs:.3e}, max_rel {self.max_rel:.3e}, rankings identical "
            f"{agree}/{len(self.results)}, tolerance {self.tolerance:g}: {'PASS' if self.passed else 'FAIL'}"
        )
        return out


def ranking(logits: np.ndarray) -> np.ndarray:
    """Indices by logit descending, ties by lower index first (the server's order)."""
    return ranking_order(logits)


def rankings_agree(reference: np.ndarray, candidate: np.ndarray, tolerance: float) -> bool:
    """True when every pair the candidate orders differently is explained by the tolerance: their
    reference logits differ by at most twice it (each may have moved by the tolerance)."""
    order = ranking(candidate)
    ref_sorted = reference[order]
    # In the candidate's order the reference may only increase by what two errors can undo.
    return bool(np.all(np.diff(ref_sorted) <= 2 * tolerance))


def compare(name: str, reference: np.ndarray, candidate: np.ndarray, tolerance: float,
            tokens_match: bool = True) -> QueryResult:
    diff = np.abs(candidate.astype(np.float64) - reference.astype(np.float64))
    rel = diff / np.maximum(np.abs(reference.astype(np.float64)), REL_FLOOR)
    return QueryResult(
        name=name, n=len(reference), max_abs=float(diff.max()), max_rel=float(rel.max()),
        ranking_identical=bool(np.array_equal(ranking(reference), ranking(candidate))),
        ranking_agrees=rankings_agree(reference, candidate, tolerance), tokens_match=tokens_match,
    )


def reference_scorer(checkpoint: str | Path) -> Scorer:
    """Our PyTorch model in fp32, one unpadded pair at a time."""
    import torch

    from .checkpoint import load_reranker

    model = load_reranker(checkpoint, dtype="fp32")

    @torch.no_grad()
    def score(query: str, passages: Sequence[str], rows: list[list[int]]):
        out = []
        for row in rows:
            ids = torch.tensor([row], dtype=torch.int32)
            out.append(float(model(ids, torch.ones_like(ids))[0, 0]))
        return np.asarray(out, dtype=np.float32), None

    return score


def onnx_scorer(onnx_path: str | Path, batch_size: int = 0, runtime: str = "onnxruntime",
                precision: str = "f32") -> Scorer:
    """ONNX Runtime or OpenVINO (``precision``: its hint, f32 or bf16) on left-padded batches of mixed
    lengths (``batch_size`` 0: one per query)."""
    from .cpu_runtime import cpu_model

    model = cpu_model(onnx_path, runtime, precision)

    def score(query: str, passages: Sequence[str], rows: list[list[int]]):
        step = batch_size or len(rows)
        out = []
        for start in range(0, len(rows), step):
            batch = left_pad(rows[start:start + step])
            out.append(model(batch.input_ids, batch.attention_mask)[:, 0])
        return np.concatenate(out).astype(np.float32), None

    return score


def engine_scorer(plan: str | Path) -> Scorer:
    """A TensorRT engine run directly on the GPU, rows padded to their length bucket as served."""
    from rerank_contract.prompt import choose_bucket

    from .engine_meta import read_meta
    from .engine_runner import TrtRunner

    runner = TrtRunner(plan)
    buckets = read_meta(plan)["buckets"]

    def score(query: str, passages: Sequence[str], rows: list[list[int]]):
        batch = left_pad(rows, length=choose_bucket(max(len(r) for r in rows), buckets))
        return runner(batch.input_ids, batch.attention_mask)[:, 0].astype(np.float32), None

    return score


def endpoint_scorer(url: str, protocol: str = "grpc", model_name: str | None = None) -> Scorer:
    """A served ensemble (NIM's gRPC/KServe contract) through tritonclient."""
    from rerank_client.tensors import DEFAULT_ENSEMBLE_NAME, infer_once

    name = model_name or DEFAULT_ENSEMBLE_NAME

    def score(query: str, passages: Sequence[str], rows: list[list[int]]):
        result = infer_once(url, protocol, name, query, list(passages), truncate="END")
        logits = np.empty(len(passages), dtype=np.float32)
        counts = np.empty(len(passages), dtype=np.int64)
        logits[result.index] = result.logit
        counts[result.index] = result.token_count
        return logits, counts

    return score


def default_cases(n_random: int, seed: int) -> list[tuple[str, Case]]:
    fixed = [(f"fixed{i:02d}", c) for i, c in enumerate(FIXED_CASES)]
    rand = [(f"rand{i:02d}", c) for i, c in enumerate(random_cases(seed, n_random))]
    return fixed + rand


def run_parity(
    tokenizer_dir: str | Path,
    reference: Scorer,
    candidate: Scorer,
    tolerance: float,
    cases: list[tuple[str, Case]],
    max_length: int = 8192,
) -> ParityReport:
    from tqdm import tqdm

    encoder = PairEncoder(load_tokenizer(str(tokenizer_dir)), max_length=max_length)
    report = ParityReport(tolerance=tolerance)
    for name, case in tqdm(cases, desc="parity", unit="query", leave=False):
        rows = encoder.encode(case.query, case.passages, Truncate.END)
        ref, _ = reference(case.query, case.passages, rows)
        cand, counts = candidate(case.query, case.passages, rows)
        tokens_match = counts is None or bool(np.array_equal(counts, [len(r) for r in rows]))
        report.results.append(compare(name, ref, cand, tolerance, tokens_match))
    return report


def main_parity(checkpoint: str, onnx: str | None, endpoint: str | None, protocol: str,
                model_name: str | None, tolerance: float | None, n_random: int, seed: int,
                batch_size: int, engine: str | None = None, runtime: str = "auto", precision: str = "f32") -> int:
    """CLI entry: prints the per-query table and returns the exit code."""
    import json

    from .checkpoint import resolve_checkpoint

    if sum(bool(x) for x in (onnx, endpoint, engine)) != 1:
        raise SystemExit("parity needs exactly one candidate: --onnx PATH, --engine PATH or --endpoint HOST:PORT")
    ckpt = resolve_checkpoint(checkpoint)
    if engine:
        from .engine_meta import read_meta

        dtype = read_meta(engine)["precision"]
        candidate = engine_scorer(engine)
        label = f"TensorRT engine {engine} ({dtype})"
    elif onnx:
        meta_path, quantized = Path(onnx).with_name("export_meta.json"), Path(onnx).with_name("quantize_meta.json")
        if quantized.exists():  # rerank-build quantize's output
            dtype = json.loads(quantized.read_text())["precision"]
        else:
            dtype = json.loads(meta_path.read_text())["dtype"] if meta_path.exists() else "fp32"
        # ONNX Runtime has no bf16 CPU kernels: the bf16 export runs in OpenVINO.
        chosen = runtime if runtime != "auto" else ("openvino" if dtype == "bf16" else "onnxruntime")
        candidate = onnx_scorer(onnx, batch_size, chosen, precision)
        if chosen == "openvino" and precision == "bf16":
            dtype = "bf16-linear"
        label = f"{'OpenVINO' if chosen == 'openvino' else 'ONNX Runtime'} {onnx} ({dtype}" + (
            f", {precision} compute)" if chosen == "openvino" else ")")
    else:
        dtype = "fp32"
        candidate = endpoint_scorer(endpoint, protocol, model_name)  # type: ignore[arg-type]
        label = f"endpoint {protocol}://{endpoint}"
    tol = tolerance if tolerance is not None else TOLERANCES[dtype]
    report = run_parity(ckpt, reference_scorer(ckpt), candidate, tol, default_cases(n_random, seed))
    print(f"parity: reference (PyTorch fp32, unpadded) vs {label}")
    for line in report.lines():
        print(line)
    sys.stdout.flush()
    return 0 if report.passed else 1

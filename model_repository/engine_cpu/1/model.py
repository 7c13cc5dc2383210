"""CPU engine step: OpenVINO or ONNX Runtime with the TensorRT engine's tensors (input_ids,
attention_mask -> logits).

The dynamic batcher hands over several requests, each left-padded to its own length bucket (the
inputs allow ragged batches, see config.pbtxt). All their rows are regrouped by true length
(``rerank_contract.engine_input.compact_runs``, copied beside this file: the split that minimises padded
tokens plus a per-run cost) and each run is cut to its own longest row, so a request whose passages
are mostly short no longer pays for its longest one. Bidirectional attention with a key-padding mask
and relative RoPE make a row's score independent of its padding (tested): this changes speed, not scores.

The engine is reachable on its own, not only through the ensemble, so each request is checked first
(``rerank_contract.engine_input.engine_input_problem``: ids in the vocabulary, a binary mask of the ids'
shape, no empty row, no width past the longest bucket) and a bad one answers INVALID_ARGUMENT alone;
a non-finite score is never returned.

Deadlines (``rerank_contract.deadline``): with ``deadlines`` on, a request that cannot finish by the
deadline its client sent (the ``deadline_ns`` parameter) at the engine's measured speed is answered
UNAVAILABLE "Request timeout expired" before anything is computed for it, counted in
``rerank_engine_dropped_requests_total{reason="deadline"}``; the others in its batch are scored as they would be alone.

The runtime is OpenVINO or ONNX Runtime (``runtime`` parameter), same tensors either way. OpenVINO's
``precision``: ``bf16`` runs the linear layers in bf16 and the rest in fp32 (openvino_engine.py), ``f32``
everything in fp32, ``auto`` (the default) bf16 where the CPU has AVX512-BF16 or AMX, else f32; bf16
asked for on a CPU without them runs f32 with a warning. ONNX Runtime computes in fp32. The counter ``rerank_engine_tokens_total{kind="useful"|"padded"}`` on Triton's metrics
port says how much of what the runtime computed was padding.
"""

import json
import os
import time

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

from openvino_engine import cpu_has_bf16, openvino_runner
from rerank_contract import deadline, engine_input

# ONNX Runtime's CPU arena keeps the memory of the largest run it has seen: measured on the small
# preset, 15 GB after a few 8k-token rows, for good. Runs wider than this give their arena chunks back
# (memory.enable_memory_arena_shrinkage): 441 MB after the same runs, about as fast, since such runs
# are long. Narrower runs keep the arena, which saves them 7-10 % (they repeat and are short).
SHRINK_ARENA_WIDTH = 512


def onnxruntime_runner(path, threads):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    shrink = ort.RunOptions()
    shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def run(ids, mask):
        feeds = {"input_ids": ids, "attention_mask": mask}
        return session.run(["logits"], feeds, shrink if ids.shape[1] > SHRINK_ARENA_WIDTH else None)[0]

    return run


#: What config.pbtxt must give this model (filled from RepositorySettings by rerank-build repository).
ENGINE_PARAMETERS = ("onnx_file", "intra_op_threads", "runtime", "precision", "shape_cache", "max_tokens_per_run",
                     "max_width", "vocab_size", "deadlines")


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        # Every parameter is written by the repository assembly, whose RepositorySettings hold the
        # defaults (their one home): a missing one is a broken repository, named here.
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        missing = [k for k in ENGINE_PARAMETERS if k not in params]
        if missing:
            raise ValueError(f"engine: config.pbtxt lacks the parameters {missing}")
        here = os.path.join(args["model_repository"], args["model_version"])
        path = os.path.join(here, params["onnx_file"])
        threads = int(params["intra_op_threads"])
        runtime = params["runtime"]
        precision = params["precision"]
        if runtime == "openvino":
            native = cpu_has_bf16()
            if precision == "auto":
                precision = "bf16" if native else "f32"
            elif precision == "bf16" and not native:
                pb_utils.Logger.log_warn("engine: this CPU has no AVX512-BF16/AMX; running OpenVINO in f32, not bf16")
                precision = "f32"
            self.run = openvino_runner(path, threads, precision, int(params["shape_cache"]))
        else:
            precision = "f32"
            self.run = onnxruntime_runner(path, threads)
        pb_utils.Logger.log_info(f"engine: {runtime}, {precision}")
        self.max_tokens = int(params["max_tokens_per_run"])
        self.max_width = int(params["max_width"])
        self.vocab_size = int(params["vocab_size"])
        self.tokens = pb_utils.MetricFamily(name="rerank_engine_tokens_total", kind=pb_utils.MetricFamily.COUNTER,
                                            description="Tokens the CPU engine ran: useful (in the mask) or padded")
        self.useful = self.tokens.Metric(labels={"kind": "useful"})
        self.padded = self.tokens.Metric(labels={"kind": "padded"})
        self.deadlines = params["deadlines"] == "on"
        self.rate = deadline.ServiceRate()
        # The family is kept: Triton unregisters a metric family once its Python object is gone.
        self.dropped = pb_utils.MetricFamily(
            name="rerank_engine_dropped_requests_total", kind=pb_utils.MetricFamily.COUNTER,
            description="Requests the CPU engine dropped uncomputed: by reason (deadline: it could not finish in time)")
        self.expired = self.dropped.Metric(labels={"reason": "deadline"})

    def execute(self, requests):
        ids = [pb_utils.get_input_tensor_by_name(r, "input_ids").as_numpy() for r in requests]
        masks = [pb_utils.get_input_tensor_by_name(r, "attention_mask").as_numpy() for r in requests]
        problems = [engine_input.engine_input_problem(i, m, self.max_width, self.vocab_size) for i, m in zip(ids, masks)]
        good = [k for k, problem in enumerate(problems) if problem is None]
        responses = [pb_utils.InferenceResponse(error=pb_utils.TritonError(problem, pb_utils.TritonError.INVALID_ARG))
                     if problem else None for problem in problems]
        if self.deadlines and good:
            good = self.drop_late(requests, masks, good, responses)
        if not good:
            return responses
        try:
            logits = self.score([ids[k] for k in good], [masks[k] for k in good])
        except Exception as exc:  # an engine failure fails these requests, not the server
            error = pb_utils.TritonError(f"engine failed: {exc}", pb_utils.TritonError.INTERNAL)
            return [r or pb_utils.InferenceResponse(error=error) for r in responses]
        start = 0
        for k in good:
            block = logits[start:start + ids[k].shape[0]]
            start += ids[k].shape[0]
            if np.isfinite(block).all():
                responses[k] = pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("logits", block)])
            else:
                responses[k] = pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    "engine produced a non-finite score", pb_utils.TritonError.INTERNAL))
        return responses

    def drop_late(self, requests, masks, good, responses):
        """Answer the requests that cannot finish by their deadline; return the others."""
        now = time.time_ns()
        deadlines = [deadline.deadline_of(requests[k].parameters()) for k in good]
        late, _ = deadline.late(deadlines, [int(masks[k].sum()) for k in good], now, self.rate.ns_per_token)
        for j, predicted in late.items():
            responses[good[j]] = pb_utils.InferenceResponse(error=pb_utils.TritonError(
                deadline.expired_message("engine", deadlines[j], now, predicted), pb_utils.TritonError.UNAVAILABLE))
        if late:
            self.expired.increment(len(late))
        return [k for j, k in enumerate(good) if j not in late]

    def score(self, ids, masks):
        """Logits [rows, 1] for the rows of all requests, in order (blocks may differ in width); the time
        it took per useful token feeds the deadline checks' estimate of the engine's speed."""
        started = time.monotonic_ns()
        width = max(block.shape[1] for block in ids)
        input_ids = np.concatenate([_left_pad(b, width, 0) for b in ids])
        mask = np.concatenate([_left_pad(m, width, 0) for m in masks])
        lengths = mask.sum(axis=1)
        logits = np.empty((input_ids.shape[0], 1), dtype=np.float32)
        runs = engine_input.compact_runs(lengths, self.max_tokens)
        self.useful.increment(int(lengths.sum()))
        self.padded.increment(sum(len(rows) * run_width for rows, run_width in runs))
        for rows, run_width in runs:
            logits[rows] = self.run(np.ascontiguousarray(input_ids[rows, -run_width:], dtype=np.int32),
                                    np.ascontiguousarray(mask[rows, -run_width:], dtype=np.int32))
        self.rate.observe(int(lengths.sum()), time.monotonic_ns() - started)
        return logits


def _left_pad(block, width, value):
    if block.shape[1] == width:
        return block
    pad = np.full((block.shape[0], width - block.shape[1]), value, dtype=block.dtype)
    return np.concatenate([pad, block], axis=1)

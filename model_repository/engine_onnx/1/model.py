"""CPU engine step: ONNX Runtime with the TensorRT engine's tensors (input_ids, attention_mask ->
logits). The dynamic batcher hands over several requests; rows of equal length run together, in
chunks of at most ``max_tokens_per_run`` padded tokens to bound memory."""

import json
import os
from collections import defaultdict

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        here = os.path.join(args["model_repository"], args["model_version"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", "0"))
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            os.path.join(here, params.get("onnx_file", "model.onnx")), options, providers=["CPUExecutionProvider"]
        )
        self.max_tokens = int(params.get("max_tokens_per_run", "16384"))

    def execute(self, requests):
        ids = [pb_utils.get_input_tensor_by_name(r, "input_ids").as_numpy() for r in requests]
        masks = [pb_utils.get_input_tensor_by_name(r, "attention_mask").as_numpy() for r in requests]
        results = [None] * len(requests)
        by_width = defaultdict(list)
        for i, block in enumerate(ids):
            by_width[block.shape[1]].append(i)
        for width, members in by_width.items():
            try:
                logits = self._run(np.concatenate([ids[i] for i in members]),
                                   np.concatenate([masks[i] for i in members]), width)
            except Exception as exc:  # an engine failure fails these requests, not the server
                error = pb_utils.TritonError(f"engine failed: {exc}", pb_utils.TritonError.INTERNAL)
                for i in members:
                    results[i] = pb_utils.InferenceResponse(error=error)
                continue
            start = 0
            for i in members:
                rows = ids[i].shape[0]
                results[i] = pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("logits", logits[start:start + rows])])
                start += rows
        return results

    def _run(self, input_ids, attention_mask, width):
        step = max(1, self.max_tokens // max(width, 1))
        out = [
            self.session.run(["logits"], {
                "input_ids": input_ids[s:s + step].astype(np.int32, copy=False),
                "attention_mask": attention_mask[s:s + step].astype(np.int32, copy=False),
            })[0]
            for s in range(0, input_ids.shape[0], step)
        ]
        return np.concatenate(out).astype(np.float32, copy=False)

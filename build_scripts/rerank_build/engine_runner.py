"""Run a TensorRT engine directly (no Triton): parity and sweeps of the engine itself on a GPU.

TensorRT 10's name-based API with PyTorch CUDA tensors as buffers; picks the optimization profile
that holds each batch, as Triton's TensorRT backend does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .engine_build import import_tensorrt
from .engine_meta import read_meta
from .profiles import Profile


class TrtRunner:
    """``runner(input_ids, attention_mask) -> logits`` on one GPU."""

    def __init__(self, plan: str | Path, device: int = 0) -> None:
        import torch

        import_tensorrt()
        import tensorrt as trt

        self.torch = torch
        self.device = torch.device("cuda", device)
        torch.cuda.set_device(self.device)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(plan).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not load {plan} (built by another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        self.profiles = [Profile.from_dict(p) for p in read_meta(plan)["profiles"]]
        self.stream = torch.cuda.Stream(self.device)
        self.active_profile = -1

    def profile_for(self, batch: int, seq: int) -> int:
        for index, profile in enumerate(self.profiles):
            if profile.holds(batch, seq):
                return index
        raise ValueError(f"no optimization profile holds a [{batch}, {seq}] batch")

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        torch = self.torch
        batch, seq = input_ids.shape
        profile = self.profile_for(batch, seq)
        if profile != self.active_profile:
            self.context.set_optimization_profile_async(profile, self.stream.cuda_stream)
            self.active_profile = profile
        tensors: dict[str, Any] = {
            "input_ids": torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int32)).to(self.device),
            "attention_mask": torch.from_numpy(np.ascontiguousarray(attention_mask, dtype=np.int32)).to(self.device),
            "logits": torch.empty((batch, 1), dtype=torch.float32, device=self.device),
        }
        for name in ("input_ids", "attention_mask"):
            self.context.set_input_shape(name, (batch, seq))
        for name, tensor in tensors.items():
            self.context.set_tensor_address(name, tensor.data_ptr())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        self.stream.synchronize()
        return tensors["logits"].cpu().numpy()

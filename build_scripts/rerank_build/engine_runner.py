"""Run a TensorRT engine directly (no Triton): parity and sweeps of the engine itself on a GPU.

TensorRT 10's name-based API with device buffers from the container's own CUDA runtime
(:mod:`rerank_build.cudart`, no PyTorch); picks the optimization profile that holds each batch, as
Triton's TensorRT backend does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .cudart import CudaRuntime
from .engine_build import import_tensorrt
from .engine_meta import read_meta
from .profiles import Profile


class TrtRunner:
    """``runner(input_ids, attention_mask) -> logits`` on one GPU."""

    def __init__(self, plan: str | Path, device: int = 0) -> None:
        import_tensorrt()
        import tensorrt as trt

        self.trt = trt
        self.cuda = CudaRuntime(device)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(plan).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not load {plan} (built by another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        self.profiles = [Profile.from_dict(p) for p in read_meta(plan)["profiles"]]
        self.stream = self.cuda.stream_create()
        self.active_profile = -1
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity in bytes)

    def profile_for(self, batch: int, seq: int) -> int:
        for index, profile in enumerate(self.profiles):
            if profile.holds(batch, seq):
                return index
        raise ValueError(f"no optimization profile holds a [{batch}, {seq}] batch")

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, capacity = self.buffers.get(name, (0, 0))
        if capacity < nbytes:
            if ptr:
                self.cuda.free(ptr)
            ptr, capacity = self.cuda.malloc(nbytes), nbytes
            self.buffers[name] = (ptr, capacity)
        return ptr

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        batch, seq = input_ids.shape
        profile = self.profile_for(batch, seq)
        if profile != self.active_profile:
            if not self.context.set_optimization_profile_async(profile, self.stream):
                raise RuntimeError(f"TensorRT could not select optimization profile {profile}")
            self.active_profile = profile
        inputs = {"input_ids": np.ascontiguousarray(input_ids, dtype=np.int32),
                  "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int32)}
        logits = np.empty((batch, 1), dtype=np.float32)
        for name, array in inputs.items():
            ptr = self._buffer(name, array.nbytes)
            self.cuda.to_device(ptr, array)
            if not self.context.set_input_shape(name, self.trt.Dims([batch, seq])):
                raise RuntimeError(f"TensorRT refused shape [{batch}, {seq}] for {name}")
            self.context.set_tensor_address(name, ptr)
        out = self._buffer("logits", logits.nbytes)
        self.context.set_tensor_address("logits", out)
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execution failed")
        self.cuda.stream_synchronize(self.stream)
        return self.cuda.to_host(logits, out)

"""The few CUDA runtime calls the TensorRT tools need (device buffers, a stream, free memory), through
ctypes on the ``libcudart`` of the container that runs TensorRT.

Why not PyTorch: a PyPI torch wheel brings its own CUDA, which need not match the TensorRT container's
CUDA or the node's driver; the build image installs a CPU-only torch (for the reference model) and the
engine runner and the build's memory measurements use the container's own CUDA runtime instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np

#: cudaMemcpyKind values (cuda_runtime_api.h).
HOST_TO_DEVICE, DEVICE_TO_HOST = 1, 2


class CudaError(RuntimeError):
    """A CUDA runtime call failed (or no CUDA runtime could be loaded)."""


def _load() -> ctypes.CDLL:
    names = [ctypes.util.find_library("cudart"), "libcudart.so", "libcudart.so.13", "libcudart.so.12"]
    for name in names:
        if not name:
            continue
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise CudaError("no CUDA runtime (libcudart) found: run inside NVIDIA's TensorRT or Triton container on a GPU")


class CudaRuntime:
    """``libcudart`` on one device. Pointers and streams are plain ints (what TensorRT takes)."""

    def __init__(self, device: int = 0) -> None:
        self.lib = _load()
        self.lib.cudaGetErrorString.restype = ctypes.c_char_p
        self._check(self.lib.cudaSetDevice(ctypes.c_int(device)), "cudaSetDevice")

    def _check(self, code: int, call: str) -> None:
        if code != 0:
            message = self.lib.cudaGetErrorString(ctypes.c_int(code)).decode()
            raise CudaError(f"{call} failed with CUDA error {code}: {message}")

    def mem_get_info(self) -> tuple[int, int]:
        """(free, total) bytes of device memory, as the driver sees them (all processes)."""
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        self._check(self.lib.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total)), "cudaMemGetInfo")
        return free.value, total.value

    def malloc(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        self._check(self.lib.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(max(1, nbytes))), "cudaMalloc")
        return int(ptr.value or 0)

    def free(self, ptr: int) -> None:
        self._check(self.lib.cudaFree(ctypes.c_void_p(ptr)), "cudaFree")

    def to_device(self, ptr: int, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        self._check(self.lib.cudaMemcpy(ctypes.c_void_p(ptr), array.ctypes.data_as(ctypes.c_void_p),
                                        ctypes.c_size_t(array.nbytes), ctypes.c_int(HOST_TO_DEVICE)), "cudaMemcpy")

    def to_host(self, array: np.ndarray, ptr: int) -> np.ndarray:
        """Fill the C-contiguous ``array`` from device memory at ``ptr``; returns it."""
        self._check(self.lib.cudaMemcpy(array.ctypes.data_as(ctypes.c_void_p), ctypes.c_void_p(ptr),
                                        ctypes.c_size_t(array.nbytes), ctypes.c_int(DEVICE_TO_HOST)), "cudaMemcpy")
        return array

    def stream_create(self) -> int:
        stream = ctypes.c_void_p()
        self._check(self.lib.cudaStreamCreate(ctypes.byref(stream)), "cudaStreamCreate")
        return int(stream.value or 0)

    def stream_synchronize(self, stream: int) -> None:
        self._check(self.lib.cudaStreamSynchronize(ctypes.c_void_p(stream)), "cudaStreamSynchronize")

    def synchronize(self) -> None:
        self._check(self.lib.cudaDeviceSynchronize(), "cudaDeviceSynchronize")

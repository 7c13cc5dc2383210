"""Python client for the llama-3.2-nv-rerankqa-1b-v2 Triton ensemble (NIM's gRPC/KServe contract)."""

from .tensors import DEFAULT_ENSEMBLE_NAME, RawResult, infer_once

__all__ = ["DEFAULT_ENSEMBLE_NAME", "RawResult", "infer_once"]

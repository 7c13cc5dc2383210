"""Python client for the llama-3.2-nv-rerankqa-1b-v2 Triton ensemble (NIM's gRPC/KServe contract).

    from rerank_client import RerankClient
    with RerankClient("localhost:8001") as client:
        for r in client.rerank("which way should i go?", passages, top_n=3):
            print(r.index, r.logit, r.relevance_score)
"""

from .aio import AsyncRerankClient
from .core import PassageError, RerankResult, ServerLimits
from .errors import (
    ClientClosedError, DeadlineExceededError, InputTooLongError, InvalidInputError, RerankError, ServerUnavailableError,
)
from .formats import to_cohere, to_nim
from .sync import RerankClient
from .tensors import DEFAULT_ENSEMBLE_NAME

__all__ = [
    "AsyncRerankClient", "ClientClosedError", "DEFAULT_ENSEMBLE_NAME", "DeadlineExceededError", "InputTooLongError", "InvalidInputError",
    "PassageError", "RerankClient", "RerankError", "RerankResult", "ServerLimits", "ServerUnavailableError", "to_cohere", "to_nim",
]

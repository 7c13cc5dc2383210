"""REST gateway for the llama-3.2-nv-rerankqa-1b-v2 Triton ensemble.

It speaks NIM's ``/v1/ranking`` (and the hosted ``/v1/retrieval/{model}/reranking``), Cohere's
``/v1/rerank`` and ``/v2/rerank`` (Jina, vLLM), and TEI's and Infinity's ``/rerank``, so that LangChain,
LlamaIndex, Haystack, the Cohere SDK and LiteLLM work unchanged. It reaches Triton over gRPC through
``rerank_client.AsyncRerankClient``. Run it with ``rerank-gateway --triton HOST:PORT``.
"""

__version__ = "0.1.0"

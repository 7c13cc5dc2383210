"""The request contract of the reranker, shared by every component (the bottom of the stack).

- :mod:`rerank_contract.names`: model ids, the ensemble's tensor names, the names of the limits;
- :mod:`rerank_contract.prompt`: the template, BOS, truncation, request limits and padding.

The client library, the REST gateway, the Triton models (which get a verbatim copy of this package)
and the build tools import it; it imports only numpy (and ``tokenizers`` where a tokenizer is loaded).
"""

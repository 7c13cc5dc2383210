"""The request contract of the reranker, shared by every component (the bottom of the stack).

- :mod:`rerank_contract.names`: model ids, the ensemble's tensor names, the names of the limits;
- :mod:`rerank_contract.prompt`: the template, BOS, truncation and padding;
- :mod:`rerank_contract.limits`: the request limits (one defaults table, one parser);
- :mod:`rerank_contract.ports`: the one Ports type (NIM's layout);
- :mod:`rerank_contract.ranking`: the ranking-order rule;
- :mod:`rerank_contract.engine_input`: the CPU engine's row grouping and input checks (engine internals).

The client library, the REST gateway, the Triton models (which get a verbatim copy of this package)
and the build tools import it; it imports only numpy (and ``tokenizers`` where a tokenizer is loaded).
"""

"""Load tests (Locust) and benchmarks for the reranker ensemble; run as ``python -m loadtests.<name>``."""

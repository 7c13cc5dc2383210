"""Running the reranker: everything between an assembled model repository and a serving stack.

One small module per job:

- :mod:`rerank_serving.server`: the tritonserver command line (the one place its flags are written) and
  :class:`~rerank_serving.server.TritonServer`, a child process that always cleans up after itself;
- :mod:`rerank_serving.stack`: tritonserver (one or several replicas) plus the REST gateway, in NIM's
  ports (:class:`rerank_contract.ports.Ports`), run in the foreground by ``rerank-serve``;
- :mod:`rerank_serving.watchdog`: restarts what dies in that stack (a python stub, a server, the gateway);
- :mod:`rerank_serving.stubs`: the python-backend stubs seen from ``/proc`` (standard library only);
- :mod:`rerank_serving.supervise`: the serving image's main process, which stops tritonserver when a stub
  dies so that the container restarts;
- :mod:`rerank_serving.cli`: ``rerank-serve`` (``rerank-build serve`` is the same command).

Building the repository (checkpoint, export, engines, assembly) is ``rerank_build``'s job; this package
never imports it, so the serving image carries no build tooling.
"""

__version__ = "0.1.0"

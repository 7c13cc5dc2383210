#!/bin/sh
# Serving image entrypoint. The tritonserver command line is built by rerank_serving.server's
# server_command, the same function the local stack uses (`--print` shows it): NIM's layout (KServe
# HTTP on 8003; the REST gateway is the public HTTP face on 8000), model control off, Triton's admin
# API groups restricted to requests carrying $RERANK_TRITON_ADMIN_KEY (a random key nobody is told when
# unset). Extra arguments are passed to tritonserver. rerank_serving.supervise runs it and stops it when
# a python stub dies (Triton would keep answering 200 to health checks and 500 to every request), so
# that the container restarts.
set -eu
exec python3 -m rerank_serving.supervise --image -- "$@"

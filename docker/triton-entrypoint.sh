#!/bin/sh
# Serving image entrypoint: tritonserver in NIM's layout (KServe HTTP on 8003; the REST gateway is the
# public HTTP face on 8000) with model control off and Triton's admin API groups (model repository,
# shared memory, logging, trace) restricted to requests carrying the header triton-admin-key
# (gRPC: triton-grpc-protocol-triton-admin-key) with $RERANK_TRITON_ADMIN_KEY; when that is unset, a
# random key nobody is told closes them. Extra arguments are passed to tritonserver.
# triton_supervise.py runs tritonserver and stops it when a python stub dies (Triton would keep
# answering 200 to health checks and 500 to every request), so that the container restarts.
set -eu
key="${RERANK_TRITON_ADMIN_KEY:-$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')}"
restricted="model-repository,shared-memory,logging,trace:triton-admin-key=${key}"
exec python3 /usr/local/bin/triton_supervise.py -- tritonserver --model-repository=/models --model-control-mode=none --strict-readiness=true \
    --http-port=8003 --http-restricted-api="${restricted}" --grpc-restricted-protocol="${restricted}" "$@"

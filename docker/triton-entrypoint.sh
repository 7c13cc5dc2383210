#!/bin/sh
# Serving image entrypoint: tritonserver in NIM's layout (KServe HTTP on 8003; the REST gateway is the
# public HTTP face on 8000) with model control off and Triton's admin API groups (model repository,
# shared memory, logging, trace) restricted to requests carrying the header triton-admin-key
# (gRPC: triton-grpc-protocol-triton-admin-key) with $RERANK_TRITON_ADMIN_KEY; when that is unset, a
# random key nobody is told closes them. Extra arguments are passed to tritonserver.
set -eu
key="${RERANK_TRITON_ADMIN_KEY:-$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')}"
restricted="model-repository,shared-memory,logging,trace:triton-admin-key=${key}"
exec tritonserver --model-repository=/models --model-control-mode=none --strict-readiness=true \
    --http-port=8003 --http-restricted-api="${restricted}" --grpc-restricted-protocol="${restricted}" "$@"

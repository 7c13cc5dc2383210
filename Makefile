# Two commands for a fresh machine: `make serve` (set up, build, serve) and `make test`.
# Everything installs into .venv from pyproject.toml + requirements.lock (pinned).

SHELL := /bin/bash
# The Triton python-backend stub embeds the system libpython, so the venv is built from the
# system interpreter (docs/triton.md); fall back to whatever python3.11 is on PATH.
PYTHON ?= $(shell for p in /usr/bin/python3.11 python3.11 python3; do command -v $$p >/dev/null && { command -v $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PRESET ?= tiny
SEED ?= 0
BUILD := build

# make serve: MODEL=<HF id or local checkpoint dir> serves a real checkpoint; empty = random `small`.
# Ports in NIM's layout, defined once in contract/rerank_contract/ports.py (REST API 8000, Triton gRPC
# 8001, metrics 8002, Triton's own KServe HTTP 8003): set HTTP_PORT, GRPC_PORT, METRICS_PORT or
# TRITON_HTTP_PORT to move one; unset, rerank-serve's defaults (those) apply.
MODEL ?=
HOST ?= 127.0.0.1
HTTP_PORT ?=
GRPC_PORT ?=
METRICS_PORT ?=
TRITON_HTTP_PORT ?=
# make serve REPLICAS=2: two tritonserver replicas (the second on each Triton port + 10), the gateway
# balancing over both (failover on one machine; two replicas on 2 cores add no throughput).
REPLICAS ?= 1
REPOSITORY ?= $(BUILD)/model_repository
DEFAULT_CHECKPOINT := $(BUILD)/checkpoints/small
SERVE_CHECKPOINT := $(if $(MODEL),$(MODEL),$(DEFAULT_CHECKPOINT))

# make loadtest: DURATION=60s USERS=8 SPAWN_RATE=8 USER_CLASSES=... LOCUST_ARGS="--passages 10,50"
DURATION ?= 60s
USERS ?= 8
SPAWN_RATE ?= 8
USER_CLASSES ?= RestGatewayUser,GrpcClientUser,HttpClientUser,GrpcRawUser,HttpRawUser
LOCUST_ARGS ?=
# make bench: QUICK=1 for the CI mode (tiny preset, few requests, no vLLM)
QUICK ?=

.PHONY: setup test typecheck serve repository checkpoint onnx parity full-check loadtest soak overload chunk-cost bench gateway-overhead clean

setup: $(STAMP)

# TensorRT's API as typed stubs, for mypy only: kept out of site-packages (the stub package ships a
# bare `tensorrt` directory that would make `import tensorrt` succeed) and installed without its
# dependency on the real tensorrt (which cannot install here).
TYPING_STUBS := $(VENV)/typing-stubs
TRT_STUBS := tensorrt-stubs==10.11.0.33.1

# The five packages of this repository, in development mode: contract/ (the request contract),
# client/ (rerank_client), gateway/ (rerank_gateway), serving/ (rerank_serving: tritonserver, the
# local stack, the image's supervisor) and the root (build tools, load tests).
PACKAGES := contract/pyproject.toml client/pyproject.toml gateway/pyproject.toml serving/pyproject.toml pyproject.toml

$(STAMP): $(PACKAGES) requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e contract -e client -e gateway -e serving -e .
	rm -rf $(TYPING_STUBS)
	$(BIN)/python -m pip install -q --no-deps --target $(TYPING_STUBS) $(TRT_STUBS)
	$(BIN)/python scripts/fix_trt_stubs.py $(TYPING_STUBS)
	touch $@

test: setup
	$(BIN)/python -m pytest tests

# mypy on the code that calls TensorRT, against TensorRT 10.11's stubs (the serving container's, 25.06)
typecheck: setup
	$(BIN)/python -m mypy

# tritonserver and the REST gateway in the foreground; Ctrl-C or SIGTERM stops both.
serve: repository
	exec $(BIN)/rerank-build serve --repository $(REPOSITORY) --host $(HOST) $(if $(HTTP_PORT),--http-port $(HTTP_PORT)) \
		$(if $(GRPC_PORT),--grpc-port $(GRPC_PORT)) $(if $(METRICS_PORT),--metrics-port $(METRICS_PORT)) \
		$(if $(TRITON_HTTP_PORT),--triton-http-port $(TRITON_HTTP_PORT)) --replicas $(REPLICAS)

# Builds what is missing: the default checkpoint (when MODEL is empty) and the CPU repository
# (--reuse keeps one built from the same checkpoint and settings).
repository: setup
	@if [ -z "$(MODEL)" ] && [ ! -f $(DEFAULT_CHECKPOINT)/model.safetensors ]; then \
		$(BIN)/rerank-build checkpoint --preset small --seed $(SEED) --out $(DEFAULT_CHECKPOINT); fi
	$(BIN)/rerank-build repository --checkpoint $(SERVE_CHECKPOINT) --target cpu --out $(REPOSITORY) --reuse

checkpoint: setup
	$(BIN)/rerank-build checkpoint --preset $(PRESET) --seed $(SEED) --out $(BUILD)/checkpoints/$(PRESET)

onnx: checkpoint
	$(BIN)/rerank-build export-onnx --checkpoint $(BUILD)/checkpoints/$(PRESET) --precision fp32 --out $(BUILD)/onnx/$(PRESET)-fp32
	$(BIN)/rerank-build export-onnx --checkpoint $(BUILD)/checkpoints/$(PRESET) --precision fp16 --out $(BUILD)/onnx/$(PRESET)-fp16

parity: onnx
	$(BIN)/rerank-build parity --checkpoint $(BUILD)/checkpoints/$(PRESET) --onnx $(BUILD)/onnx/$(PRESET)-fp32/model.onnx
	$(BIN)/rerank-build parity --checkpoint $(BUILD)/checkpoints/$(PRESET) --onnx $(BUILD)/onnx/$(PRESET)-fp16/model.onnx

# Headless Locust run against the stack at HTTP_PORT/GRPC_PORT/TRITON_HTTP_PORT, or one started on REPOSITORY.
loadtest: repository
	$(BIN)/python -m loadtests.run_loadtest --duration $(DURATION) --users $(USERS) --spawn-rate $(SPAWN_RATE) \
		--user-classes $(USER_CLASSES) $(if $(GRPC_PORT),--grpc-url $(HOST):$(GRPC_PORT)) \
		$(if $(TRITON_HTTP_PORT),--http-url $(HOST):$(TRITON_HTTP_PORT)) $(if $(HTTP_PORT),--gateway-url http://$(HOST):$(HTTP_PORT)) \
		--repository $(REPOSITORY) -- $(LOCUST_ARGS)

bench: setup
	$(BIN)/python -m loadtests.bench $(if $(QUICK),--quick)

# The REST gateway's cost over gRPC (raw and client library): latency, pairs/s at 8 clients, CPU.
# Locust at saturation (REST gateway + gRPC) for DURATION, RSS of every server process every 10 s;
# report with a memory plot under build/reports/soak-<time>/. make soak DURATION=10m
soak: repository
	$(BIN)/python -m loadtests.soak --duration $(DURATION) --repository $(REPOSITORY)

# Open-loop load at 2x and 5x the sustainable rate, with and without the gateway's admission budget.
overload: repository
	$(BIN)/python -m loadtests.overload --repository $(REPOSITORY) --label $(if $(MODEL),$(notdir $(MODEL)),small)

# truncate=CHUNK against END on the small checkpoint (max_sequence_length 512): docs/chunk.md
chunk-cost: repository
	$(BIN)/python -m loadtests.chunk_cost --checkpoint $(DEFAULT_CHECKPOINT) --label small

gateway-overhead: repository
	$(BIN)/python -m loadtests.gateway_overhead --repository $(REPOSITORY) --label $(if $(MODEL),$(notdir $(MODEL)),small)

# Full-size preset (1.24B random weights): minutes and ~15 GB of memory, not part of CI.
full-check: setup
	$(BIN)/rerank-build full-check --workdir $(BUILD)/full-check

clean:
	rm -rf $(BUILD)

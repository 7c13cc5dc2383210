"""Shared fixtures: tiny checkpoint and its ONNX exports, built once per test session."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# --- every test that starts or uses a server carries the `server` marker ----------------------------

#: Fixtures that start a real tritonserver (or a stack around one).
SERVER_FIXTURES = frozenset({"server", "gateway", "start_gateway", "chunk_server", "stack"})
#: What a command that starts a server (or the stack, or the gateway) carries.
SERVER_COMMANDS = ("tritonserver", "TritonServer", "ServingStack", "rerank_gateway", "rerank-gateway",
                   "-m rerank_serving.supervise")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unmarked = [item.nodeid for item in items if SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))
                and item.get_closest_marker("server") is None]
    if unmarked:
        raise pytest.UsageError("tests using a server fixture without the `server` marker: " + ", ".join(unmarked))


@pytest.fixture(autouse=True)
def _unmarked_tests_start_no_server(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """A test without the `server` marker that starts a server process fails, naming it."""
    if request.node.get_closest_marker("server") is not None:
        yield
        return
    original = subprocess.Popen.__init__

    def guarded(self, args, *rest, **kwargs):  # type: ignore[no-untyped-def]
        text = " ".join(map(str, args)) if isinstance(args, (list, tuple)) else str(args)
        if any(command in text for command in SERVER_COMMANDS) or ("rerank-build" in text and " serve" in text):
            raise AssertionError(f"{request.node.nodeid} starts a server without the `server` marker: {text[:300]}")
        original(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded)
    yield


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def tiny_checkpoint(artifacts: Path) -> Path:
    from rerank_build.checkpoint import write_random_checkpoint

    return write_random_checkpoint("tiny", artifacts / "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_onnx_fp32(tiny_checkpoint: Path, artifacts: Path) -> Path:
    from rerank_build.export_onnx import export_onnx

    return export_onnx(tiny_checkpoint, artifacts / "tiny-onnx-fp32", dtype="fp32")


@pytest.fixture(scope="session")
def tiny_onnx_fp16(tiny_checkpoint: Path, artifacts: Path) -> Path:
    from rerank_build.export_onnx import export_onnx

    return export_onnx(tiny_checkpoint, artifacts / "tiny-onnx-fp16", dtype="fp16")


@pytest.fixture(scope="session")
def tokenizer(tiny_checkpoint: Path):
    from rerank_contract.prompt import load_tokenizer

    return load_tokenizer(str(tiny_checkpoint))


@pytest.fixture(scope="session")
def encoder(tokenizer):
    from rerank_contract.prompt import PairEncoder

    return PairEncoder(tokenizer)


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint: Path):
    from rerank_build.checkpoint import load_reranker

    return load_reranker(tiny_checkpoint)


# --- a real tritonserver on the tiny CPU repository -------------------------------------------

#: Small limits so that every limit can be hit cheaply in tests. The engine computes in fp32, so that
#: served scores equal the reference's to 1e-4 everywhere; the default precision (bf16 linear layers
#: where the CPU has them) has its own served parity tests (test_cpu_engine.py).
TEST_LIMITS = dict(max_rows=64, engine_max_batch_size=64, max_tokens_per_request=16384, max_bytes_per_request=2_000_000,
                   preferred_batch_sizes=(4, 8, 16), tokenizer_instances=2, admission_passages=512,
                   cpu_precision="f32")


@pytest.fixture(scope="session")
def tiny_repository(tiny_checkpoint: Path, tiny_onnx_fp32: Path, artifacts: Path) -> Path:
    from rerank_build.repository import RepositorySettings, build_repository

    return build_repository(tiny_checkpoint, artifacts / "repo-tiny", RepositorySettings(**TEST_LIMITS),
                            onnx=tiny_onnx_fp32)


@pytest.fixture(scope="session")
def server(tiny_repository: Path, artifacts: Path):
    from rerank_serving.server import TritonServer

    log = artifacts / "tritonserver.log"
    srv = TritonServer(tiny_repository, log_path=log)
    try:
        srv.start(timeout_s=180)
    except Exception:
        print(log.read_text()[-5000:] if log.exists() else "no log")
        raise
    yield srv
    srv.stop()


@pytest.fixture(params=["grpc", "http"])
def protocol(request) -> str:
    return request.param


# --- the REST gateway in front of that server -------------------------------------------------

@pytest.fixture(scope="session")
def start_gateway(server, artifacts: Path):
    """Start a gateway (a real ``rerank-gateway`` process) with extra flags; stopped at session end."""
    from rerank_serving.server import free_ports
    from rerank_serving.stack import GatewayProcess

    started = []

    def start(*args: str) -> GatewayProcess:
        log = artifacts / f"gateway-{len(started)}.log"
        gateway = GatewayProcess(server.grpc_url, port=free_ports(1)[0], log_path=log, extra_args=list(args))
        try:
            gateway.start(60)
            gateway.wait_ready(60)
        except Exception:
            print(log.read_text()[-5000:] if log.exists() else "no log")
            raise
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture(scope="session")
def gateway(start_gateway):
    """The gateway with its default settings."""
    return start_gateway()

"""Shared fixtures: tiny checkpoint and its ONNX exports, built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
    from rerank_prompt import load_tokenizer

    return load_tokenizer(str(tiny_checkpoint))


@pytest.fixture(scope="session")
def encoder(tokenizer):
    from rerank_prompt import PairEncoder

    return PairEncoder(tokenizer)


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint: Path):
    from rerank_build.checkpoint import load_reranker

    return load_reranker(tiny_checkpoint)

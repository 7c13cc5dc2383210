"""End to end through the real console script: checkpoint -> ONNX -> parity (tiny preset)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rerank_build.parity import compare, rankings_agree

CLI = str(Path(sys.executable).with_name("rerank-build"))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def cli_artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    for seed in ("0", "1"):
        done = run_cli("checkpoint", "--preset", "tiny", "--seed", seed, "--out", str(root / f"ckpt{seed}"))
        assert done.returncode == 0, done.stderr
    for dtype in ("fp32", "fp16"):
        done = run_cli("export-onnx", "--checkpoint", str(root / "ckpt0"), "--dtype", dtype, "--out", str(root / dtype))
        assert done.returncode == 0, done.stderr
        assert (root / dtype / "model.onnx").is_file() and (root / dtype / "tokenizer.json").is_file()
    done = run_cli("export-onnx", "--checkpoint", str(root / "ckpt1"), "--out", str(root / "other"))
    assert done.returncode == 0, done.stderr
    return root


@pytest.mark.parametrize("dtype,runtime,precision,tolerance", [
    ("fp32", "onnxruntime", "f32", "0.0001"), ("fp32", "openvino", "f32", "0.0001"),
    ("fp32", "openvino", "bf16", "0.1"), ("fp16", "auto", "f32", "0.05")])
def test_parity_passes(cli_artifacts, dtype, runtime, precision, tolerance):
    """Every CPU engine at every precision it serves (ONNX Runtime f32, OpenVINO f32, OpenVINO bf16: the
    linear layers in bf16, what `auto` picks on an AVX512-BF16/AMX CPU), plus the fp16 export."""
    done = run_cli("parity", "--checkpoint", str(cli_artifacts / "ckpt0"),
                   "--onnx", str(cli_artifacts / dtype / "model.onnx"), "--runtime", runtime, "--precision", precision)
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("fixed00") for line in lines) and any(line.startswith("rand11") for line in lines)
    assert "PASS" in lines[-1] and f"tolerance {tolerance}" in lines[-1], lines[-1]
    if runtime != "auto":
        assert ("OpenVINO" if runtime == "openvino" else "ONNX Runtime") in done.stdout


def test_parity_fails_on_a_different_model(cli_artifacts):
    done = run_cli("parity", "--checkpoint", str(cli_artifacts / "ckpt0"),
                   "--onnx", str(cli_artifacts / "other" / "model.onnx"), "--random-queries", "1")
    assert done.returncode == 1
    assert "FAIL" in done.stdout.splitlines()[-1]


def test_parity_needs_one_candidate(cli_artifacts):
    done = run_cli("parity", "--checkpoint", str(cli_artifacts / "ckpt0"))
    assert done.returncode != 0 and "exactly one candidate" in done.stderr


def test_cli_reports_missing_checkpoint(tmp_path):
    done = run_cli("export-onnx", "--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and "does not exist" in done.stderr


def test_rank_agreement_ignores_only_true_ties():
    import numpy as np

    ref = np.array([3.0, 1.0, 1.00001, -2.0])
    assert rankings_agree(ref, np.array([3.0, 1.00002, 1.0, -2.0]), 1e-4)
    assert not rankings_agree(ref, np.array([-3.0, 1.0, 1.0, 2.0]), 1e-4)
    result = compare("q", ref, ref + 1e-5, 1e-4)
    assert result.ranking_identical and result.max_abs == pytest.approx(1e-5)

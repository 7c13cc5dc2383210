"""Names that explain themselves (issue 25, item 5), each old name kept as a deprecated path."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_cpu_engine_template_is_engine_cpu():
    """It runs OpenVINO by default, so it is named for the device, not for ONNX Runtime."""
    from rerank_build.repository import ENGINE_TEMPLATE, TEMPLATES

    assert ENGINE_TEMPLATE["cpu"] == "engine_cpu" and (TEMPLATES / "engine_cpu" / "config.pbtxt").is_file()
    assert not (ROOT / "model_repository" / "engine_onnx").exists()


def test_engine_internals_live_apart_from_the_request_contract():
    import rerank_contract.engine_input as engine_input
    import rerank_contract.prompt as prompt

    source = (ROOT / "contract" / "rerank_contract" / "prompt.py").read_text()
    assert "def compact_runs" not in source and "def engine_input_problem" not in source
    for name in ("compact_runs", "engine_input_problem", "RUN_COST_TOKENS"):
        with pytest.warns(DeprecationWarning, match=f"moved to rerank_contract.engine_input.{name}"):
            assert getattr(prompt, name) is getattr(engine_input, name), "the old import path still works"
    with pytest.raises(AttributeError):
        _ = prompt.no_such_name


@pytest.mark.parametrize("argv,dest,value,warned", [
    (["export-onnx", "--checkpoint", "c", "--out", "o", "--precision", "fp16"], "dtype", "fp16", None),
    (["export-onnx", "--checkpoint", "c", "--out", "o", "--dtype", "fp16"], "dtype", "fp16", "--dtype is deprecated"),
    (["checkpoint", "--preset", "tiny", "--precision", "fp32"], "dtype", "fp32", None),
    (["full-check", "--precision", "fp16"], "dtype", "fp16", None),
    (["repository", "--checkpoint", "c", "--target", "cpu", "--precision", "fp32"], "cpu_precision", "f32", None),
    (["repository", "--checkpoint", "c", "--target", "cpu", "--precision", "bf16"], "cpu_precision", "bf16", None),
    (["repository", "--checkpoint", "c", "--target", "cpu", "--precision", "f32"], "cpu_precision", "f32",
     "precision 'f32' is deprecated"),
    (["parity", "--checkpoint", "c"], "precision", "f32", None),
    (["engine", "--onnx", "m", "--out", "o", "--precision", "fp8"], "precision", "fp8", None),
])
def test_one_precision_vocabulary(argv, dest, value, warned, caplog):
    """fp32, fp16, bf16, fp8 in every command, under --precision; the CPU engine still gets OpenVINO's
    own hint (f32); old spellings parse and log that they are deprecated."""
    from rerank_build.cli import build_parser

    with caplog.at_level(logging.WARNING, logger="rerank_build"):
        args = build_parser().parse_args(argv)
    assert getattr(args, dest) == value
    messages = [r.getMessage() for r in caplog.records]
    assert (any(warned in m for m in messages) if warned else not messages), messages


def test_an_unknown_precision_is_refused(capsys):
    from rerank_build.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["repository", "--checkpoint", "c", "--target", "cpu", "--precision", "fp8"])
    assert "invalid precision 'fp8' (choose from auto, fp32, bf16)" in capsys.readouterr().err

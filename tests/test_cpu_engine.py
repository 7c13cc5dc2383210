"""The CPU engine step on OpenVINO instead of ONNX Runtime: same tensors, the reference's scores."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import TEST_LIMITS
from test_model_py import load_model
import fake_pb_utils as pb
from rerank_build.parity import default_cases, endpoint_scorer, reference_scorer, run_parity
from rerank_build.repository import RepositoryError, RepositorySettings, build_repository


@pytest.fixture(scope="module")
def openvino_repository(tiny_checkpoint, tiny_onnx_fp32, artifacts):
    settings = RepositorySettings(**{**TEST_LIMITS, "cpu_engine": "openvino"})
    return build_repository(tiny_checkpoint, artifacts / "repo-openvino", settings, onnx=tiny_onnx_fp32)


def test_openvino_engine_step_matches_onnxruntime(openvino_repository, tiny_repository):
    ids = np.array([[0, 0, 128000, 10, 20, 30], [128000, 5, 6, 7, 8, 9]], dtype=np.int32)
    mask = (np.arange(6) >= np.array([[2], [0]])).astype(np.int32)
    outputs = []
    for repo in (openvino_repository, tiny_repository):
        engine = load_model(repo, "engine")
        out = engine.execute([pb.InferenceRequest({"input_ids": ids, "attention_mask": mask})])[0]
        assert out.error is None
        outputs.append(out.output_tensors["logits"])
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-4)


def test_bf16_needs_openvino():
    with pytest.raises(RepositoryError, match="bf16 needs cpu_engine openvino"):
        RepositorySettings(cpu_precision="bf16")
    with pytest.raises(RepositoryError, match="cpu_engine must be one of"):
        RepositorySettings(cpu_engine="tvm")


@pytest.mark.server
def test_served_with_openvino_scores_as_the_reference(openvino_repository, tiny_checkpoint, artifacts):
    from rerank_build.server import TritonServer

    with TritonServer(openvino_repository, log_path=artifacts / "tritonserver-openvino.log") as server:
        report = run_parity(tiny_checkpoint, reference_scorer(tiny_checkpoint), endpoint_scorer(server.grpc_url),
                            1e-4, default_cases(4, 0))
    assert report.passed, "\n".join(report.lines())

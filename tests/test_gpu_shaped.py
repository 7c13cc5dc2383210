"""GPU-shaped serving on the CPU: the repository `rerank-build repository --target gpu` writes, served by
a real tritonserver with the CPU engine standing in for the TensorRT plan.

Everything Triton sees is the GPU target's: the engine's max_batch_size, its padded (not ragged) inputs
so that only equal shapes batch, every batch size preferred with no queue delay, the batching strategy
(batchstrategy.so, compiled by the repository step) with the engine's token budget and its profiles'
rows by width. Only what runs an execution differs: the CPU engine's model.py instead of TensorRT, and a
thin wrapper that records the shape of every execution Triton forms (test instrumentation; it also
sleeps a little per execution, so that requests queue up and batches form).

Under concurrent load of mixed widths (ensemble requests of mixed passage lengths, and direct engine
requests at each profile's full size, which may never share an execution) every execution must fit a
profile and the token budget, and every answer must equal the reference model's.
"""

from __future__ import annotations

import json
import random
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from rerank_build.profiles import Profile
from rerank_build.repository import RepositorySettings, build_repository, parse_config
from rerank_serving.server import TritonServer
from rerank_build.textgen import random_text
from rerank_client.tensors import DEFAULT_ENSEMBLE_NAME, infer_once

from gpu_helpers import fake_engine
from triton_helpers import client, tensor

pytestmark = [pytest.mark.server, pytest.mark.timeout(300)]

#: A small engine whose limits the load reaches: 16 rows up to 32 tokens, 8 at 64, 4 at 128; at most
#: 512 tokens per execution (the same rules as the full plan's 64 x 2048 ... 16 x 8192).
BUCKETS = (16, 32, 64, 128)
MAX_BATCH = 16
BUDGET = 512
#: Per execution, so that requests queue while one runs (controlled slowness, not a race).
EXECUTION_DELAY_S = 0.03
#: Requests per client thread (6 ensemble clients, 6 direct engine clients).
REQUESTS = 10

WRAPPER = '''"""Test instrumentation: the CPU engine, recording the shape of every execution Triton forms."""
import json
import time

import triton_python_backend_utils as pb_utils

from cpu_engine import TritonPythonModel as CpuEngine


class TritonPythonModel(CpuEngine):
    def initialize(self, args):
        super().initialize(args)
        params = {k: v["string_value"] for k, v in json.loads(args["model_config"])["parameters"].items()}
        self.shape_log, self.delay = params["shape_log"], float(params["execution_delay_s"])

    def execute(self, requests):
        shapes = [list(pb_utils.get_input_tensor_by_name(r, "input_ids").as_numpy().shape) for r in requests]
        with open(self.shape_log, "a") as log:
            log.write(json.dumps(shapes) + "\\n")
        time.sleep(self.delay)
        return super().execute(requests)
'''


def stand_in_for_the_plan(gpu_repo: Path, cpu_repo: Path, shape_log: Path) -> None:
    """Replace the GPU repository's TensorRT plan by the CPU engine, changing only what runs the
    execution: the backend and instance kind, the CPU engine's files and parameters. The batching
    (max_batch_size, inputs, dynamic_batching, batchstrategy.so and its parameters) stays the GPU's."""
    from google.protobuf import text_format

    engine = gpu_repo / "engine"
    gpu = parse_config((engine / "config.pbtxt").read_text(), "gpu engine")
    cpu = parse_config((cpu_repo / "engine" / "config.pbtxt").read_text(), "cpu engine")
    gpu.platform, gpu.backend = "", cpu.backend
    gpu.ClearField("default_model_filename")  # the plan's file name; the python backend runs model.py
    del gpu.instance_group[:]
    gpu.instance_group.extend(cpu.instance_group)
    for key, value in cpu.parameters.items():
        gpu.parameters[key].string_value = value.string_value
    gpu.parameters["shape_log"].string_value = str(shape_log)
    gpu.parameters["execution_delay_s"].string_value = str(EXECUTION_DELAY_S)
    (engine / "config.pbtxt").write_text(text_format.MessageToString(gpu))
    (engine / "1" / "model.plan").unlink()
    for item in (cpu_repo / "engine" / "1").iterdir():
        target = engine / "1" / ("cpu_engine.py" if item.name == "model.py" else item.name)
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, target)
    (engine / "1" / "model.py").write_text(WRAPPER)


@pytest.fixture(scope="module")
def gpu_shaped(tmp_path_factory, tiny_checkpoint, tiny_onnx_fp32):
    work = tmp_path_factory.mktemp("gpu-shaped")
    plan = fake_engine(work / "engine", max_batch=MAX_BATCH, buckets=BUCKETS, max_tokens=BUDGET, preset_name="tiny")
    from rerank_build.engine_meta import gpu_defaults

    limits = dict(tokenizer_instances=2, admission_passages=512)
    gpu_settings = RepositorySettings(target="gpu", **gpu_defaults(plan), **limits)
    gpu_repo = build_repository(tiny_checkpoint, work / "gpu-repo", gpu_settings, engine=plan,
                                serving_tensorrt="10.11.0")
    cpu_settings = RepositorySettings(target="cpu", **{**gpu_defaults(plan), **limits, "cpu_engine": "onnxruntime"})
    cpu_repo = build_repository(tiny_checkpoint, work / "cpu-repo", cpu_settings, onnx=tiny_onnx_fp32)
    shape_log = work / "shapes.jsonl"
    stand_in_for_the_plan(gpu_repo, cpu_repo, shape_log)
    meta = json.loads((gpu_repo / "engine" / "1" / "engine_meta.json").read_text())
    with TritonServer(gpu_repo, log_path=work / "tritonserver.log") as server:
        yield server, meta, shape_log, gpu_repo


def test_the_stand_in_keeps_the_gpu_batching(gpu_shaped):
    _, meta, _, repo = gpu_shaped
    config = parse_config((repo / "engine" / "config.pbtxt").read_text(), "engine")
    assert config.max_batch_size == MAX_BATCH and not any(i.allow_ragged_batch for i in config.input)
    assert list(config.dynamic_batching.preferred_batch_size) == list(range(1, MAX_BATCH + 1))
    assert config.dynamic_batching.max_queue_delay_microseconds == 0
    assert config.parameters["batch_max_tokens"].string_value == str(BUDGET)
    assert config.parameters["batch_rows_by_width"].string_value == "32:16,64:8,128:4"
    assert [p["max"] for p in meta["profiles"]] == [[16, 32], [8, 64], [4, 128]]
    assert (repo / "engine" / "batchstrategy.so").is_file() and "tensorrt" not in config.platform


def reference_logits(tiny_model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return tiny_model(torch.from_numpy(ids), torch.from_numpy(mask))[:, 0].numpy()


def test_mixed_concurrent_load_fits_every_profile_and_scores_as_the_reference(gpu_shaped, tiny_model, tokenizer):
    from rerank_contract import prompt as rp

    server, meta, shape_log, _ = gpu_shaped
    encoder = rp.PairEncoder(tokenizer, max_length=BUCKETS[-1])  # the repository's max_sequence_length
    profiles = [Profile.from_dict(p) for p in meta["profiles"]]
    shape_log.unlink(missing_ok=True)
    errors: list[str] = []
    checks: list[tuple[np.ndarray, np.ndarray]] = []  # (served, reference)
    lock = threading.Lock()

    def ensemble_client(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(REQUESTS):
            query = random_text(rng, rng.randint(2, 6))
            passages = [random_text(rng, rng.choice((3, 8, 20, 60))) for _ in range(rng.randint(1, 4))]
            try:
                r = infer_once(server.grpc_url, "grpc", DEFAULT_ENSEMBLE_NAME, query, passages, truncate="END")
            except Exception as exc:  # noqa: BLE001 - recorded, asserted below
                errors.append(f"ensemble: {exc}")
                continue
            served = np.empty(len(passages), dtype=np.float32)
            served[r.index] = r.logit
            rows = [encoder.encode(query, [p], "END")[0] for p in passages]
            expected = np.array([reference_logits(tiny_model, np.array([row], np.int32),
                                                  np.ones((1, len(row)), np.int32))[0] for row in rows])
            with lock:
                checks.append((served, expected))

    def engine_client(seed: int) -> None:
        """Direct engine requests of a profile's full, half or quarter size at its longest width: two
        halves fit one execution, a third row never does."""
        rng = random.Random(seed)
        c = client(server, "grpc")
        import tritonclient.grpc as grpcclient
        try:
            for _ in range(REQUESTS):
                profile = rng.choice(profiles)
                rows, width = profile.max[0] // rng.choice((1, 2, 2, 4)), profile.max[1]
                ids = np.array([[rng.randrange(1, 1000) for _ in range(width)] for _ in range(rows)], np.int32)
                mask = np.ones_like(ids)
                mask[:, : rng.randrange(0, width // 2)] = 0  # left padding, as the tokenizer sends
                try:
                    result = c.infer("engine", [tensor(grpcclient, "input_ids", ids),
                                                tensor(grpcclient, "attention_mask", mask)])
                except Exception as exc:  # noqa: BLE001 - recorded, asserted below
                    errors.append(f"engine {rows}x{width}: {exc}")
                    continue
                served = result.as_numpy("logits")[:, 0]
                expected = np.array([reference_logits(tiny_model, ids[k:k + 1, -int(mask[k].sum()):],
                                                      mask[k:k + 1, -int(mask[k].sum()):])[0] for k in range(rows)])
                with lock:
                    checks.append((served, expected))
        finally:
            c.close()

    threads = [threading.Thread(target=ensemble_client, args=(s,)) for s in range(6)]
    threads += [threading.Thread(target=engine_client, args=(100 + s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert not any(t.is_alive() for t in threads), "the load did not finish"
    assert errors == []
    assert len(checks) == 12 * REQUESTS
    for served, expected in checks:
        np.testing.assert_allclose(served, expected, atol=1e-4)

    executions = [json.loads(line) for line in shape_log.read_text().splitlines()]
    shared = [e for e in executions if len(e) > 1]
    print(f"{len(executions)} executions, {len(shared)} of several requests; widths "
          f"{sorted({s[1] for e in executions for s in e})}")
    for shapes in executions:
        widths = {width for _, width in shapes}
        rows = sum(r for r, _ in shapes)
        assert len(widths) == 1, f"requests of different widths share an execution: {shapes}"
        width = widths.pop()
        assert any(p.holds(rows, width) for p in profiles), f"no profile holds {rows} x {width}: {shapes}"
        assert rows * width <= BUDGET and rows <= MAX_BATCH, shapes
    assert len(shared) >= 6, "too few batched executions to say the strategy was exercised"
    assert len({e[0][1] for e in shared}) >= 2, "batching happened at one width only"

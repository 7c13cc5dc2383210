"""Unit tests of each model.py, loaded from an assembled repository with a faked pb_utils."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest
from google.protobuf import json_format

import fake_pb_utils as pb
from rerank_contract import engine_input
from rerank_contract import prompt as rp
from rerank_build.repository import parse_config

QUERY = b"how much protein should a female eat?"


def load_model(repo, name: str, **replace):
    """Import ``repo/name/1/model.py`` as Triton would, and initialize it (``replace``: module
    attributes to swap before initialize, e.g. a hardware probe)."""
    version_dir = repo / name / "1"
    sys.modules["triton_python_backend_utils"] = pb
    sys.path.insert(0, str(version_dir))
    try:
        spec = importlib.util.spec_from_file_location(f"model_{name}", version_dir / "model.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(version_dir))
    for attribute, value in replace.items():
        setattr(module, attribute, value)
    config = parse_config((repo / name / "config.pbtxt").read_text(), name)
    model = module.TritonPythonModel()
    if hasattr(model, "initialize"):
        model.initialize({
            "model_config": json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True)),
            "model_repository": str(repo / name), "model_version": "1", "model_name": name,
        })
    return model


def request(passages, query=QUERY, **params):
    q = np.array([query] * len(passages), dtype=object).reshape(-1, 1)
    p = np.array(passages, dtype=object).reshape(-1, 1)
    return pb.InferenceRequest({"query": q, "passage": p}, params)


@pytest.fixture(scope="module")
def tokenizer_model(tiny_repository):
    return load_model(tiny_repository, "tokenizer")


def test_tokenizer_pads_left_to_a_bucket(tokenizer_model, encoder):
    passages = [b"As a general guideline", b"summit"]
    out = tokenizer_model.execute([request(passages)])[0]
    assert not out.has_error()
    ids, mask, counts = out.output_tensors["INPUT_IDS"], out.output_tensors["ATTENTION_MASK"], out.output_tensors["TOKEN_COUNTS"]
    rows = encoder.encode(QUERY, passages)
    assert ids.shape == mask.shape == (2, 64) and ids.dtype == mask.dtype == np.int32
    assert counts.tolist() == [[len(rows[0])], [len(rows[1])]]
    assert ids[0, -len(rows[0]):].tolist() == rows[0] and ids[0, 0] == rp.EOS_ID
    assert mask.sum(axis=1).tolist() == [len(r) for r in rows]
    started, ended = out.output_tensors["TOKENIZE_NS"].T  # when tokenizing started and ended, every row
    assert out.output_tensors["TOKENIZE_NS"].dtype == np.int64 and len(set(started)) == len(set(ended)) == 1
    assert 0 < started[0] <= ended[0]


def test_tokenizer_passes_truncate_through(tokenizer_model):
    long = b"word " * 9000
    cut = tokenizer_model.execute([request([long], truncate="END")])[0]
    assert cut.output_tensors["TOKEN_COUNTS"].tolist() == [[8192]]
    refused = tokenizer_model.execute([request([long])])[0]
    assert refused.error.code() == pb.TritonError.INVALID_ARG
    assert "exceeds maximum allowed token size 8192" in refused.error.message()


def test_tokenizer_fails_only_the_bad_request(tokenizer_model):
    outs = tokenizer_model.execute([request([b"ok"]), request([b"\xff"]), request([b"fine", b"too"])])
    assert [o.has_error() for o in outs] == [False, True, False]
    assert "not valid UTF-8" in outs[1].error.message()


def test_tokenizer_limits(tokenizer_model):
    assert tokenizer_model.limits.max_rows == 64 and tokenizer_model.limits.max_tokens == 16384
    out = tokenizer_model.execute([request([b"word " * 300] * 40)])[0]
    assert out.error.code() == pb.TritonError.INVALID_ARG and "padded tokens" in out.error.message()


def test_engine_batches_requests_and_chunks_runs(tiny_repository, tiny_onnx_fp32):
    from rerank_build.export_onnx import ort_session

    engine = load_model(tiny_repository, "engine")
    rng = np.random.default_rng(0)
    blocks = [rng.integers(0, 128000, size=(n, w), dtype=np.int32) for n, w in ((3, 64), (2, 64), (4, 128))]
    reqs = [pb.InferenceRequest({"input_ids": b, "attention_mask": np.ones_like(b)}) for b in blocks]
    engine.max_tokens = 128  # forces chunks of 2 rows (64) and 1 row (128)
    outs = engine.execute(reqs)
    session = ort_session(tiny_onnx_fp32)
    for block, out in zip(blocks, outs):
        expected = session.run(None, {"input_ids": block, "attention_mask": np.ones_like(block)})[0]
        assert out.output_tensors["logits"].shape == (block.shape[0], 1)
        np.testing.assert_allclose(out.output_tensors["logits"], expected, atol=1e-4)  # OpenVINO vs ORT


def test_engine_regroups_rows_by_true_length(tiny_repository, tiny_onnx_fp32, encoder):
    """Rows padded to one bucket run cut to their own lengths: same logits, far fewer tokens."""
    from rerank_build.export_onnx import ort_session
    from rerank_build.textgen import FIXED_CASES

    engine = load_model(tiny_repository, "engine")
    rows = [r for case in FIXED_CASES for r in encoder.encode(case.query, case.passages)]
    batch = rp.left_pad(rows, length=512)  # as the tokenizer pads a request with one long row
    out = engine.execute([pb.InferenceRequest({"input_ids": batch.input_ids,
                                              "attention_mask": batch.attention_mask})])[0]
    expected = ort_session(tiny_onnx_fp32).run(None, {"input_ids": batch.input_ids,
                                                      "attention_mask": batch.attention_mask})[0]
    np.testing.assert_allclose(out.output_tensors["logits"], expected, atol=1e-4)  # OpenVINO vs ORT
    runs = engine_input.compact_runs(batch.attention_mask.sum(1), max_tokens=16384)
    assert sum(len(r) * w for r, w in runs) < batch.input_ids.size / 4
    assert sorted(i for r, _ in runs for i in r) == list(range(len(rows)))


def test_compact_runs_bound_tokens_and_cover_every_row():
    lengths = np.array([10, 500, 40, 33, 64, 70, 300, 12])
    runs = engine_input.compact_runs(lengths, max_tokens=256)
    for rows, width in runs:
        assert len(rows) * width <= 256 or len(rows) == 1
        assert all(lengths[i] <= width for i in rows) and width % 8 == 0
    assert sorted(i for r, _ in runs for i in r) == list(range(8))


def test_compact_runs_is_the_cheapest_split():
    """The dynamic programme against every split of the sorted rows (small cases, brute force)."""
    import itertools

    rng = np.random.default_rng(0)
    for _ in range(30):
        lengths = rng.integers(1, 400, size=int(rng.integers(1, 9)))
        widths = np.sort(np.maximum(8, -(-lengths // 8) * 8))
        best = np.inf
        for cuts in itertools.product((0, 1), repeat=len(widths) - 1):
            bounds = [0, *[i + 1 for i, c in enumerate(cuts) if c], len(widths)]
            runs = list(zip(bounds, bounds[1:]))
            if all((b - a) * widths[b - 1] <= 1024 or b - a == 1 for a, b in runs):
                best = min(best, sum((b - a) * widths[b - 1] + engine_input.RUN_COST_TOKENS for a, b in runs))
        got = engine_input.compact_runs(lengths, max_tokens=1024)
        assert sum(len(r) * w + engine_input.RUN_COST_TOKENS for r, w in got) == best


def test_engine_counts_useful_and_padded_tokens(tiny_repository, encoder):
    """rerank_engine_tokens_total: the mask's ones and what the runtime computed, per execution."""
    from rerank_build.textgen import FIXED_CASES

    engine = load_model(tiny_repository, "engine")
    rows = [r for case in FIXED_CASES for r in encoder.encode(case.query, case.passages)]
    batch = rp.left_pad(rows, length=512)
    engine.execute([pb.InferenceRequest({"input_ids": batch.input_ids, "attention_mask": batch.attention_mask})])
    useful, padded = (m.value() for m in engine.tokens.metrics)
    assert useful == sum(map(len, rows))
    assert padded == sum(len(r) * w for r, w in engine_input.compact_runs(batch.attention_mask.sum(1), engine.max_tokens))
    assert padded < batch.input_ids.size / 4  # against every row padded to the bucket


def test_postprocess_sorts_and_aligns(tiny_repository):
    post = load_model(tiny_repository, "postprocess")
    logits = np.array([[0.5], [2.0], [0.5], [-1.0]], dtype=np.float32)
    counts = np.array([[10], [20], [30], [40]], dtype=np.int32)
    owners = np.arange(4, dtype=np.int32).reshape(-1, 1)
    tokenized = np.tile(np.array([100, 250], np.int64), (4, 1))  # when tokenizing started and ended (ns)
    out = post.execute([pb.InferenceRequest({"LOGITS": logits, "TOKEN_COUNTS": counts, "PASSAGE_INDEX": owners,
                                             "TOKENIZE_NS": tokenized})])[0].output_tensors
    assert out["INDEX"].tolist() == [[1], [0], [2], [3]]
    assert out["LOGIT"].dtype == np.float32 and out["LOGIT"][:, 0].tolist() == [2.0, 0.5, 0.5, -1.0]
    assert out["TOKEN_COUNT"].tolist() == [[20], [10], [30], [40]]
    assert out["CHUNKS"].tolist() == [[1]] * 4
    # Server-Timing's stages, the same on every row: tokenize 150 ns, then engine and postprocess as measured
    stages = out["STAGE_NS"]
    assert stages.dtype == np.int64 and stages.shape == (4, 3) and (stages == stages[0]).all()
    assert stages[0, 0] == 150 and stages[0, 1] > 0 and stages[0, 2] >= 0


def test_postprocess_takes_the_best_window_of_each_passage(tiny_repository):
    """Rows are windows: passage 0 has three, passage 1 one, passage 2 two."""
    post = load_model(tiny_repository, "postprocess")
    logits = np.array([[0.1], [3.0], [-2.0], [1.0], [0.5], [2.5]], dtype=np.float32)
    counts = np.array([[64], [64], [20], [30], [64], [40]], dtype=np.int32)
    owners = np.array([[0], [0], [0], [1], [2], [2]], dtype=np.int32)
    tokenized = np.zeros((6, 2), np.int64)
    out = post.execute([pb.InferenceRequest({"LOGITS": logits, "TOKEN_COUNTS": counts, "PASSAGE_INDEX": owners,
                                             "TOKENIZE_NS": tokenized})])[0].output_tensors
    assert out["INDEX"].tolist() == [[0], [2], [1]]
    assert out["LOGIT"][:, 0].tolist() == [3.0, 2.5, 1.0]
    assert out["TOKEN_COUNT"].tolist() == [[148], [104], [30]]
    assert out["CHUNKS"].tolist() == [[3], [2], [1]]


def _engine_request(ids, mask=None):
    ids = np.asarray(ids, dtype=np.int32)
    mask = np.ones_like(ids) if mask is None else np.asarray(mask, dtype=np.int32)
    return pb.InferenceRequest({"input_ids": ids, "attention_mask": mask})


@pytest.mark.parametrize("ids,mask,fragment", [
    ([[5, 999999]], None, "input_ids must lie in [0, 128256)"),
    ([[-1, 5]], None, "got values from -1"),
    ([[5, 6, 7]], [[1, 1]], "of the same shape"),
    ([[5, 6]], [[1, 7]], "only 0 and 1"),
    ([[5, 6], [7, 8]], [[1, 1], [0, 0]], "row 1 has an all-zero attention_mask"),
    ([[5, 6, 7]], [[1, 1, 0]], "left-padded"),
    (np.full((1, 8193), 5), None, "width 8193 exceeds the longest sequence the engine serves (8192 tokens)"),
])
def test_engine_refuses_what_only_a_direct_call_can_send(tiny_repository, ids, mask, fragment):
    """Each bad request gets INVALID_ARGUMENT on its own; the good ones batched with it are scored."""
    engine = load_model(tiny_repository, "engine")
    good = [[128000, 10, 20, 30]]
    outs = engine.execute([_engine_request(good), _engine_request(ids, mask), _engine_request(good)])
    assert outs[1].error.code() == pb.TritonError.INVALID_ARG and fragment in outs[1].error.message()
    assert outs[0].error is None and outs[2].error is None
    np.testing.assert_array_equal(outs[0].output_tensors["logits"], outs[2].output_tensors["logits"])


def test_engine_never_returns_a_non_finite_score(tiny_repository):
    engine = load_model(tiny_repository, "engine")
    engine.score = lambda ids, masks: np.array([[0.5], [np.nan]], dtype=np.float32)
    outs = engine.execute([_engine_request([[128000, 5]]), _engine_request([[128000, 6]])])
    assert outs[0].error is None and outs[0].output_tensors["logits"].tolist() == [[0.5]]
    assert outs[1].error.code() == pb.TritonError.INTERNAL and "non-finite" in outs[1].error.message()


def test_the_engine_takes_its_settings_from_the_repository_only(tiny_repository, tmp_path):
    """The engine model has no defaults of its own (RepositorySettings is their one home): a config that
    lacks one of its parameters fails to load, naming it, instead of running on a second default."""
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(tiny_repository / "engine", repo / "engine", symlinks=True)
    config = repo / "engine" / "config.pbtxt"
    config.write_text("\n".join(line for line in config.read_text().splitlines() if '"shape_cache"' not in line))
    with pytest.raises(ValueError, match=r"lacks the parameters \['shape_cache'\]"):
        load_model(repo, "engine")


def _with_deadline(inputs_request, due_ns):
    return pb.InferenceRequest({k: v.as_numpy() for k, v in inputs_request.inputs.items()},
                               {"deadline_ns": due_ns})


def test_engine_drops_requests_past_their_deadline_and_scores_the_rest_as_alone(tiny_repository):
    import time

    engine = load_model(tiny_repository, "engine")
    alone = engine.execute([_engine_request([[128000, 10, 20, 30]])])[0].output_tensors["logits"]
    now = time.time_ns()
    outs = engine.execute([_with_deadline(_engine_request([[128000, 5, 6]]), now - 1),
                           _with_deadline(_engine_request([[128000, 10, 20, 30]]), now + 60 * 10**9),
                           _engine_request([[128000, 7, 8]])])
    assert outs[0].error.code() == pb.TritonError.UNAVAILABLE
    assert outs[0].error.message().startswith("Request timeout expired") and "engine" in outs[0].error.message()
    np.testing.assert_array_equal(outs[1].output_tensors["logits"], alone)
    assert outs[2].error is None, "a request without a deadline is never dropped"
    assert engine.expired.value() == 1
    assert engine.useful.value() == 4 + 4 + 3, "the dropped request's tokens were computed"


def test_engine_drops_a_request_its_batch_cannot_finish_in_time(tiny_repository):
    """At the engine's measured speed (here 1 s per token), a batch of 7 tokens ends 7 s from now: a
    request due in 5 s is dropped before anything is computed, one due in an hour is scored."""
    import time

    engine = load_model(tiny_repository, "engine")
    engine.rate.ns_per_token = 1e9
    now = time.time_ns()
    outs = engine.execute([_with_deadline(_engine_request([[128000, 5, 6]]), now + 5 * 10**9),
                           _with_deadline(_engine_request([[128000, 10, 20, 30]]), now + 3600 * 10**9)])
    assert outs[0].error is not None and "would take about 7000 ms" in outs[0].error.message()
    assert outs[1].error is None and engine.useful.value() == 4
    assert engine.rate.ns_per_token < 1e9, "the engine learns its speed from what it ran"


def test_engine_keeps_computing_when_its_estimate_says_everything_is_late(tiny_repository):
    """An estimate far too slow (1 hour per token) predicts every request late; the engine still
    computes the one closest to its deadline, so the next estimate comes from a real run."""
    import time

    engine = load_model(tiny_repository, "engine")
    engine.rate.ns_per_token = 3600e9
    outs = engine.execute([_with_deadline(_engine_request([[128000, 5, 6]]), time.time_ns() + 5 * 10**9)])
    assert outs[0].error is None and engine.useful.value() == 3 and engine.expired.value() == 0
    assert engine.rate.ns_per_token < 3600e9


def test_engine_with_deadlines_off_computes_everything(tiny_repository, tmp_path):
    import shutil
    import time

    repo = tmp_path / "repo"
    shutil.copytree(tiny_repository / "engine", repo / "engine", symlinks=True)
    config = repo / "engine" / "config.pbtxt"
    config.write_text(config.read_text().replace('key: "deadlines" value: { string_value: "on" }',
                                                 'key: "deadlines" value: { string_value: "off" }'))
    engine = load_model(repo, "engine")
    outs = engine.execute([_with_deadline(_engine_request([[128000, 5, 6]]), time.time_ns() - 10**9)])
    assert outs[0].error is None and engine.useful.value() == 3 and engine.expired.value() == 0


def test_tokenizer_drops_a_request_past_its_deadline(tokenizer_model):
    import time

    late = request(["a passage"], deadline_ns=time.time_ns() - 10**6)
    due = request(["a passage"], deadline_ns=time.time_ns() + 60 * 10**9)
    outs = tokenizer_model.execute([late, due, request(["a passage"])])
    assert outs[0].error.code() == pb.TritonError.UNAVAILABLE
    assert outs[0].error.message().startswith("Request timeout expired") and "tokenizer" in outs[0].error.message()
    assert outs[1].error is None and outs[2].error is None
    np.testing.assert_array_equal(outs[1].output_tensors["INPUT_IDS"], outs[2].output_tensors["INPUT_IDS"])

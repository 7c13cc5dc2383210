"""Gateway logic that needs no server: settings from the environment, error wording, model names."""

from __future__ import annotations

import pytest

from rerank_client import DeadlineExceededError, InputTooLongError, RerankError, ServerUnavailableError
from rerank_contract import names
from rerank_gateway.admission import MAX_RETRY_AFTER_S, Admission, Overloaded
from rerank_gateway.errors import ApiError, describe_validation_errors, from_rerank_error
from rerank_gateway.routes.cohere import document_text
from rerank_gateway.schemas import RankingRequest
from rerank_gateway.scoring import Scorer
from rerank_gateway.settings import GatewaySettings


def test_settings_from_environment_flags_and_nim_names():
    env = {"RERANK_GATEWAY_TRITON": "triton:9001", "RERANK_GATEWAY_MAX_PASSAGES": "50", "NIM_HTTP_API_PORT": "9000",
           "NIM_SERVED_MODEL_NAME": "my-reranker", "RERANK_GATEWAY_API_KEYS": "a, b", "RERANK_GATEWAY_ACCESS_LOG": "off"}
    s = GatewaySettings.from_env(env, port=9100)
    assert (s.triton, s.max_passages, s.port, s.served_model_name) == ("triton:9001", 50, 9100, "my-reranker")
    assert s.api_keys == ("a", "b") and s.access_log is False
    assert s.model_names == ("my-reranker", *names.MODEL_ALIASES)
    assert GatewaySettings.from_env(s.to_env()) == s, "workers rebuild the same settings from the environment"
    assert GatewaySettings.from_env({"RERANK_GATEWAY_PORT": "1", "NIM_HTTP_API_PORT": "2"}).port == 1, "ours first"


@pytest.mark.parametrize("env,fragment", [({"RERANK_GATEWAY_PORT": "x"}, "RERANK_GATEWAY_PORT"),
                                          ({"RERANK_GATEWAY_MAX_PASSAGES": "0"}, "max_passages must be at least 1"),
                                          ({"RERANK_GATEWAY_ACCESS_LOG": "maybe"}, "expected a boolean"),
                                          ({"NIM_LOG_LEVEL": "loud"}, "NIM_LOG_LEVEL"),
                                          ({"RERANK_GATEWAY_TRITON": " "}, "triton: must be HOST:PORT")])
def test_bad_settings_are_named(env, fragment):
    with pytest.raises(ValueError, match=fragment):
        GatewaySettings.from_env(env)


def test_settings_are_plain_values_unless_read_from_the_environment(monkeypatch):
    """``GatewaySettings(...)`` is its arguments and the defaults (as the dataclass it replaced was);
    only ``from_env`` reads variables, and then the mapping it is given, not os.environ."""
    monkeypatch.setenv("RERANK_GATEWAY_PORT", "9999")
    assert GatewaySettings().port == 8000
    assert GatewaySettings.from_env({}).port == 8000
    assert GatewaySettings.from_env().port == 9999


def test_the_command_line_is_generated_from_the_settings_and_keeps_every_published_flag():
    """Every flag the hand-written parser had still parses to the same setting; flags win over variables."""
    from rerank_gateway.cli import build_parser
    from rerank_gateway.settings import parse_args

    argv = ["--triton", "t:1", "--host", "0.0.0.0", "--port", "9", "--workers", "2", "--served-model-name", "m",
            "--ensemble", "e", "--max-passages", "10", "--max-body-bytes", "4000", "--timeout-s", "5",
            "--ride-through-s", "0", "--triton-concurrency", "3", "--rows-per-request", "7",
            "--admission-passages", "64", "--no-admission", "--api-key", "k1", "--api-key", "k2",
            "--cors-origin", "https://a", "--log-level", "debug", "--no-access-log"]
    s = parse_args(argv, build_parser())
    assert s == GatewaySettings(triton="t:1", host="0.0.0.0", port=9, workers=2, served_model_name="m", ensemble="e",
                                max_passages=10, max_body_bytes=4000, timeout_s=5, ride_through_s=0,
                                triton_concurrency=3, rows_per_request=7, admission_passages=64, admission=False,
                                api_keys=("k1", "k2"), cors_origins=("https://a",), log_level="debug",
                                access_log=False)
    flags = {a for action in build_parser()._actions for a in action.option_strings}
    assert {f for f in argv if f.startswith("--")} <= flags
    assert set(GatewaySettings.model_fields) == {action.dest for action in build_parser()._actions} - {"help"}


def test_validation_errors_read_like_nims():
    errors = [{"type": "extra_forbidden", "loc": ("body", "top_k")},
              {"type": "extra_forbidden", "loc": ("body", "passages", 2, "title")},
              {"type": "missing", "loc": ("body", "query")},
              {"type": "string_type", "loc": ("body", "passages", 0, "text"), "msg": "Input should be a valid string"}]
    assert describe_validation_errors(errors, RankingRequest) == [
        "top_k: unknown field, expected one of model, query, passages, truncate, chunk_overlap",
        "title: unknown field, expected one of text",
        "query: field required",
        "passages[0].text: Input should be a valid string",
    ]


def test_client_errors_become_http_statuses():
    assert from_rerank_error(InputTooLongError("Input length 9000 exceeds maximum allowed token size 8192")).status == 400
    unavailable = from_rerank_error(ServerUnavailableError("down"))
    assert unavailable.status == 503 and unavailable.headers == {"Retry-After": "1"}
    assert from_rerank_error(DeadlineExceededError("late")).status == 504
    assert from_rerank_error(RerankError("odd")).status == 500


def test_document_text():
    assert document_text("plain", 0, None) == "plain"
    assert document_text({"text": "t", "id": 3}, 0, None) == "t"
    assert document_text({"title": "T", "body": "B"}, 0, ["title", "body"]) == "title: T\nbody: B"
    with pytest.raises(ApiError, match=r"documents\[4\]"):
        document_text({"title": "T"}, 4, None)


@pytest.mark.parametrize("model,ok", [(None, True), ("nvidia/llama-3.2-nv-rerankqa-1b-v2", True),
                                      ("NVIDIA/Llama-3_2-NV-RerankQA-1B-v2", True),
                                      ("nvidia/llama-nemotron-rerank-1b-v2", True),
                                      ("nvidia_llama_3_2_nv_rerankqa_1b_v2", True), ("served", True),
                                      ("nvidia/llama-3.2-nv-embedqa-1b-v2", False), ("", False)])
def test_model_names(model, ok):
    scorer = Scorer(GatewaySettings(served_model_name="served"))
    if ok:
        scorer.check_model(model)
    else:
        with pytest.raises(ApiError) as err:
            scorer.check_model(model)
        assert err.value.status == 404


def test_admission_budget_of_passages_in_flight():
    gate = Admission(10)
    first = gate.acquire(6)
    with pytest.raises(Overloaded) as refused:
        gate.acquire(5)
    assert (refused.value.in_flight, refused.value.budget) == (6, 10) and refused.value.retry_after_s >= 1
    second = gate.acquire(4)  # fits exactly
    gate.release(first, 6)
    gate.release(second, 4)
    assert gate.in_flight == 0
    # Larger than the whole budget: charged the budget, so it runs alone rather than never.
    big = gate.acquire(50)
    assert big == 10
    with pytest.raises(Overloaded):
        gate.acquire(1)
    gate.release(big, 50)
    with pytest.raises(ValueError, match="at least 1"):
        Admission(0)


def test_retry_after_follows_the_recent_rate(monkeypatch):
    clock = iter([0.0, 1.0, 1.0, 2.0, 2.0])
    monkeypatch.setattr("rerank_gateway.admission.time.perf_counter", lambda: next(clock))
    gate = Admission(1000)
    assert gate.retry_after_s() == 1, "no rate measured yet"
    a = gate.acquire(100)  # busy from t=0
    b = gate.acquire(300)
    gate.release(a, 100)  # 100 passages in 1 s
    assert gate.retry_after_s() == 3, "300 in flight at 100 passages/s"
    gate.release(b, 300)
    c = gate.acquire(900)  # a new busy period starts at t=2
    gate._rate = 1.0
    assert gate.retry_after_s() == MAX_RETRY_AFTER_S
    gate.release(c, 900)


def test_admission_settings():
    assert GatewaySettings.from_env({"RERANK_GATEWAY_ADMISSION": "off"}).admission is False
    assert GatewaySettings.from_env({"RERANK_GATEWAY_ADMISSION_PASSAGES": "64"}).admission_passages == 64
    with pytest.raises(ValueError, match="admission_passages must not be negative"):
        GatewaySettings(admission_passages=-1)


def test_an_unexpected_error_tells_the_client_an_id_and_logs_the_details(caplog):
    """The catch-all 500: the exception's text (here a path and an address) stays in the gateway's log."""
    from fastapi.testclient import TestClient

    from rerank_gateway.app import create_app

    app = create_app(GatewaySettings(triton="127.0.0.1:1"))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("cannot open /srv/secret/key.pem for 10.1.2.3:8001")

    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.get("/boom")
    assert answer.status_code == 500 and answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert body["object"] == "error" and body["type"] == "internal_error" and body["code"] == 500
    assert "secret" not in answer.text and "10.1.2.3" not in answer.text and "RuntimeError" not in answer.text
    incident = body["message"].split("(id ")[1].split(")")[0]
    logged = [r for r in caplog.records if incident in r.getMessage()]
    assert logged and "cannot open /srv/secret/key.pem" in "".join(
        __import__("traceback").format_exception(*logged[0].exc_info))

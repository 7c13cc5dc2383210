"""Each concept has one home: the limits (one defaults table, one parser), truncation (parsed once,
sent canonical) and the ranking-order rule. These check that every user takes it from there."""

from __future__ import annotations

import numpy as np

from rerank_contract import names
from rerank_contract.limits import DEFAULTS, RequestLimits, limits_from_config, published_limits
from rerank_contract.ranking import ranking_order


def _config(**params: str) -> dict:
    return {"max_batch_size": 64, "parameters": {k: {"string_value": v} for k, v in params.items()}}


def test_the_tokenizer_and_the_client_parse_the_same_limits():
    from rerank_client import ServerLimits

    config = _config(**{names.MAX_ROWS_PER_REQUEST: "32", names.MAX_TOKENS_PER_REQUEST: "4096",
                        names.LENGTH_BUCKETS: "64,128", names.MAX_BYTES_PER_REQUEST: "1000",
                        names.MAX_SEQUENCE_LENGTH: "128", names.MAX_PASSAGES_IN_FLIGHT: "7"})
    server = limits_from_config(config)
    assert server == RequestLimits(max_rows=32, max_tokens=4096, buckets=(64, 128), max_bytes=1000,
                                   max_sequence_length=128)
    client = ServerLimits.from_config({"config": config})  # get_model_config's wrapper
    assert (client.max_rows, client.max_tokens, client.buckets, client.max_bytes, client.max_sequence_length,
            client.max_in_flight) == (32, 4096, (64, 128), 1000, 128, 7)
    assert published_limits(_config()) == {"max_rows": 64}, "NIM publishes only max_batch_size"
    assert ServerLimits.from_config(_config()).max_tokens is None


def test_the_defaults_are_one_table():
    from rerank_build.repository import RepositorySettings
    from rerank_client import ServerLimits
    from rerank_contract import prompt

    s = RepositorySettings()
    assert (s.max_rows, s.max_tokens_per_request, s.max_bytes_per_request, s.max_sequence_length, s.buckets) == (
        DEFAULTS.max_rows, DEFAULTS.max_tokens, DEFAULTS.max_bytes, DEFAULTS.max_sequence_length, DEFAULTS.buckets)
    assert (ServerLimits().max_rows, ServerLimits().max_sequence_length) == (DEFAULTS.max_rows,
                                                                           DEFAULTS.max_sequence_length)
    assert prompt.RequestLimits is RequestLimits and prompt.DEFAULT_MAX_LENGTH == DEFAULTS.max_sequence_length


def test_truncate_is_sent_in_canonical_form():
    from rerank_client.tensors import Truncation
    from rerank_contract.prompt import Truncate

    assert Truncation(" end ").parameters() == {names.TRUNCATE_PARAMETER: "END"}
    assert Truncation("chunk", 8).parameters() == {names.TRUNCATE_PARAMETER: "CHUNK", names.CHUNK_OVERLAP_PARAMETER: 8}
    assert Truncation(Truncate.NONE).parameters() == {names.TRUNCATE_PARAMETER: "NONE"}
    assert Truncation(None).parameters() is None, "not given: the server's default (NIM's NONE)"
    assert Truncation("sideways").parameters() == {names.TRUNCATE_PARAMETER: "sideways"}, "the server names it"
    assert Truncation("Chunk").chunked and not Truncation("sideways").chunked


def test_the_client_plans_with_the_parsed_mode():
    from rerank_client import RerankClient
    from rerank_client.core import ServerLimits

    client = RerankClient("127.0.0.1:1", truncate=" End")
    truncation, _ = client._plan("q", ["p"], None, None, None, ServerLimits())
    assert truncation.parameters() == {names.TRUNCATE_PARAMETER: "END"}
    client.close()


def test_one_ranking_order():
    """Logit descending, ties by lower index: the postprocess model, the client's merge and parity."""
    import importlib.util
    from pathlib import Path

    from rerank_build.parity import ranking

    logits = np.array([0.5, 2.0, 0.5, 2.0, -1.0], dtype=np.float32)
    assert ranking_order(logits).tolist() == [1, 3, 0, 2, 4]
    assert ranking_order(logits, index=[9, 8, 7, 6, 5]).tolist() == [3, 1, 2, 0, 4]
    assert ranking(logits).tolist() == [1, 3, 0, 2, 4]
    for path in (Path(__file__).resolve().parents[1] / "model_repository" / "postprocess" / "1" / "model.py",):
        source = path.read_text()
        assert "ranking_order" in source and "lexsort" not in source
    assert importlib.util.find_spec("rerank_contract.ranking") is not None

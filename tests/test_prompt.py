"""The shared prompt, truncation and padding rules (rerank_contract.prompt)."""

from __future__ import annotations

import numpy as np
import pytest

from rerank_contract import prompt as rp

NEWLINE_SEPARATOR_ID = 33006  # " \n \n" is one token in Llama 3's BPE


def test_template_uses_real_newlines():
    text = rp.format_pair("q?", "p.")
    assert text == "question:q? \n \n passage:p."
    assert "\\n" not in text


def test_encoding_has_bos_and_single_separator_token(encoder):
    ids = encoder.encode("how much protein should a female eat?", ["As a general guideline"])[0]
    assert ids[0] == rp.BOS_ID
    assert ids.count(rp.BOS_ID) == 1
    assert ids.count(NEWLINE_SEPARATOR_ID) == 1
    assert rp.EOS_ID not in ids


def test_literal_backslash_n_template_gives_other_tokens(tokenizer):
    real = tokenizer.encode(rp.format_pair("q", "p")).ids
    literal = tokenizer.encode("question:q \\n \\n passage:p").ids
    assert NEWLINE_SEPARATOR_ID in real
    assert NEWLINE_SEPARATOR_ID not in literal
    assert real != literal


def test_end_truncation_cuts_the_passage_from_the_right(tokenizer):
    full = rp.PairEncoder(tokenizer).encode("short query", ["word " * 50])[0]
    enc = rp.PairEncoder(tokenizer, max_length=20)
    cut = enc.encode("short query", ["word " * 50], "END")[0]
    assert len(cut) == 20
    assert cut == full[:20]  # BOS, template and query kept, passage end dropped
    assert cut[0] == rp.BOS_ID


def test_end_truncation_cuts_query_only_when_query_alone_is_too_long(tokenizer):
    enc = rp.PairEncoder(tokenizer, max_length=12)
    long_query = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu"
    full = rp.PairEncoder(tokenizer).encode(long_query, ["passage"])[0]
    cut = enc.encode(long_query, ["passage"], "END")[0]
    assert cut == full[:12] and len(full) > 12
    assert NEWLINE_SEPARATOR_ID not in cut


def test_none_rejects_with_nims_message(tokenizer):
    enc = rp.PairEncoder(tokenizer, max_length=16)
    n = len(rp.PairEncoder(tokenizer).encode("q", ["word " * 30])[0])
    with pytest.raises(rp.InputTooLongError, match=f"^Input length {n} exceeds maximum allowed token size 16$"):
        enc.encode("q", ["ok", "word " * 30], "NONE")
    with pytest.raises(rp.InputTooLongError):
        enc.encode("q", ["word " * 30])  # NONE is the default, as NIM


def test_default_limit_is_8192_including_bos(encoder):
    assert encoder.max_length == rp.DEFAULT_MAX_LENGTH == 8192
    passage = "hello " * 9000
    cut = encoder.encode("q", [passage], "END")[0]
    assert len(cut) == 8192 and cut[0] == rp.BOS_ID
    with pytest.raises(rp.InputTooLongError, match="exceeds maximum allowed token size 8192"):
        encoder.encode("q", [passage], "NONE")


@pytest.mark.parametrize("value,expected", [
    (None, rp.Truncate.NONE), ("", rp.Truncate.NONE), ("NONE", rp.Truncate.NONE),
    ("END", rp.Truncate.END), ("end", rp.Truncate.END), (b"END", rp.Truncate.END),
])
def test_parse_truncate(value, expected):
    assert rp.parse_truncate(value) is expected


@pytest.mark.parametrize("value", ["START", "LEFT", "yes", 3])
def test_unknown_truncate_is_a_typed_error(value):
    with pytest.raises(rp.TruncateValueError, match="truncate"):
        rp.parse_truncate(value)


def test_empty_inputs_are_typed_errors(encoder):
    with pytest.raises(rp.EmptyTextError, match="^query is empty$"):
        encoder.encode("", ["p"])
    with pytest.raises(rp.EmptyTextError, match="^passage 1 is empty$"):
        encoder.encode(b"q", [b"p", b""])


def test_non_utf8_is_a_typed_error(encoder):
    with pytest.raises(rp.TextEncodingError, match="passage 0 is not valid UTF-8"):
        encoder.encode("q", [b"\xff\xfe bad"])
    with pytest.raises(rp.TextEncodingError, match="query is not valid UTF-8"):
        encoder.encode(b"caf\xe9", ["p"])


def test_errors_are_value_errors_for_callers():
    for cls in (rp.EmptyTextError, rp.TextEncodingError, rp.InputTooLongError, rp.TruncateValueError):
        assert issubclass(cls, rp.RerankInputError) and issubclass(cls, ValueError)


def test_bytes_and_str_encode_the_same(encoder):
    assert encoder.encode("Größe?", ["日本語 テキスト"]) == encoder.encode("Größe?".encode(), ["日本語 テキスト".encode()])


def test_tokenizer_without_bos_is_refused(tiny_checkpoint):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tiny_checkpoint / "tokenizer.json"))
    tok.post_processor = None
    with pytest.raises(ValueError, match="does not prepend BOS"):
        rp.PairEncoder(tok)


def test_left_pad_layout():
    batch = rp.left_pad([[1, 2, 3], [4]], pad_id=9)
    assert batch.input_ids.dtype == np.int32 and batch.attention_mask.dtype == np.int32
    assert batch.input_ids.tolist() == [[1, 2, 3], [9, 9, 4]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch.token_counts.tolist() == [3, 1]
    assert rp.left_pad([[1]], length=4).input_ids.shape == (1, 4)
    with pytest.raises(ValueError):
        rp.left_pad([[1, 2]], length=1)


@pytest.mark.parametrize("length,bucket", [(1, 64), (64, 64), (65, 128), (8192, 8192), (9000, 9000)])
def test_choose_bucket(length, bucket):
    assert rp.choose_bucket(length) == bucket


def test_count_tokens_matches_encode(encoder):
    assert encoder.count_tokens("q", ["a b c", "d"]) == [len(r) for r in encoder.encode("q", ["a b c", "d"])]


def test_bytes_are_refused_before_tokenizing():
    class NeverCalled:
        def encode(self, *args, **kwargs):
            raise AssertionError("tokenized an oversized request")

    limits = rp.RequestLimits(max_bytes=100)
    with pytest.raises(rp.RequestTooLargeError, match=r"carries 106 bytes .* limit of 100 bytes per request"):
        rp.encode_request(NeverCalled(), [b"q" * 3] * 2, [b"p" * 50, "é" * 25], "END", limits)

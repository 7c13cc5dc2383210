"""Request bodies of every API the gateway speaks, exactly as the real clients send them.

- NIM (``/v1/ranking``, ``/v1/retrieval/{model}/reranking``): unknown fields are refused with 400
  naming the field, as NIM does.
- Cohere / Jina / vLLM (``/v1/rerank``, ``/v2/rerank``), TEI and Infinity (``/rerank``): unknown
  fields are ignored, as those servers do; fields we accept but do not use are listed and documented.
Responses are built as plain dicts by the routes (documented in the OpenAPI page by the models below).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from rerank_contract import names


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


# --- NIM ---------------------------------------------------------------------------------------
class TextItem(_Strict):
    text: str


class RankingRequest(_Strict):
    """NIM's ``POST /v1/ranking`` body."""

    model: str | None = Field(None, description=f"{names.MODEL_ID}, {names.MODEL_ALIASES[1]}, the served name, "
                                                "or null/absent for the served model")
    query: TextItem
    passages: list[TextItem]
    truncate: str | None = Field(None, description="NONE (default, NIM's): a pair over the model's limit is "
                                                   "an error; END: the passage's end is cut; CHUNK (our "
                                                   "extension): every window of a long passage is scored and "
                                                   "the best one counts",
                                 examples=["NONE", "END", "CHUNK"])
    chunk_overlap: int | None = Field(None, ge=0, description="with CHUNK: tokens shared by consecutive windows "
                                                              "(default min(256, max_sequence_length / 4))")
    errors: Literal["raise", "per_passage"] | None = Field(
        None, description="raise (default, NIM's): a passage too long for truncate NONE fails the whole request "
                          "(422); per_passage (our extension): it comes back in rankings, after the scored "
                          "passages, as {index, error: {code: too_long, message, token_count}}",
        examples=["per_passage"])


class RetrievalRankingRequest(RankingRequest):
    """NIM's hosted route: the ranking body plus ``top_k`` (results kept after sorting)."""

    top_k: int | None = Field(None, ge=1)


class PassageErrorBody(BaseModel):
    code: Literal["too_long"]
    message: str
    token_count: int | None = Field(None, description="the pair's length in tokens (BOS and template included)")


class Ranking(BaseModel):
    index: int
    logit: float | None = Field(None, description="absent on an unscored passage (errors=per_passage)")
    chunks: int | None = Field(None, description="with truncate=CHUNK only: windows scored for this passage")
    error: PassageErrorBody | None = Field(None, description="errors=per_passage only: why this passage has no "
                                                             "logit; such rankings come after the scored ones")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class RankingResponse(BaseModel):
    rankings: list[Ranking] = Field(description="every passage, sorted by descending logit (ties: lower index)")
    usage: Usage


# --- Cohere / Jina / vLLM ----------------------------------------------------------------------
class CohereRerankRequest(_Lenient):
    """Cohere's rerank body (v1 and v2); Jina and vLLM send the same shape."""

    model: str | None = None
    query: str
    documents: list[Union[str, dict[str, Any]]] = Field(
        description="strings, or objects with a 'text' field (or the fields named by rank_fields)")
    top_n: int | None = Field(None, ge=1, description="results kept after sorting (default: all)")
    return_documents: bool = Field(False, description="include each result's document as {'text': ...}")
    max_tokens_per_doc: int | None = Field(
        None, ge=1, description="accepted; passages are cut at the model's pair limit (truncate END)")
    rank_fields: list[str] | None = Field(None, description="v1: fields of object documents to rank on")
    max_chunks_per_doc: int | None = Field(None, description="v1: accepted and ignored")


class CohereResult(BaseModel):
    index: int
    relevance_score: float = Field(description="sigmoid(logit), computed in fp32")
    document: dict[str, str] | None = None


class CohereRerankResponse(BaseModel):
    id: str
    results: list[CohereResult]
    meta: dict[str, Any]


# --- TEI and Infinity (both POST /rerank, told apart by their keys) ----------------------------
class TeiRerankRequest(_Lenient):
    """Hugging Face text-embeddings-inference's ``/rerank`` body."""

    query: str
    texts: list[str]
    truncate: bool | None = Field(False, description="true: cut the passage's end; false: too long is an error")
    truncation_direction: Literal["Right", "Left", "right", "left"] = "Right"
    raw_scores: bool = Field(False, description="true: raw logits; false: sigmoid(logit)")
    return_text: bool = False
    top_n: int | None = Field(None, ge=1, description="not TEI's; LiteLLM sends it, and it is applied")


class InfinityRerankRequest(_Lenient):
    """Infinity's ``/rerank`` body."""

    model: str | None = None
    query: str
    documents: list[str]
    top_n: int | None = Field(None, ge=1)
    return_documents: bool = False
    raw_scores: bool = False


def _root_rerank_kind(body: Any) -> str | None:
    if isinstance(body, dict):
        has_texts, has_documents = "texts" in body, "documents" in body
        if has_texts != has_documents:
            return "tei" if has_texts else "infinity"
    return None


RootRerankRequest = Annotated[
    Union[Annotated[TeiRerankRequest, Tag("tei")], Annotated[InfinityRerankRequest, Tag("infinity")]],
    Discriminator(_root_rerank_kind, custom_error_type="rerank_body",
                  custom_error_message="the body needs either 'texts' (TEI) or 'documents' (Infinity), not both"),
]


class TeiResult(BaseModel):
    index: int
    score: float
    text: str | None = None


class InfinityResult(BaseModel):
    index: int
    relevance_score: float
    document: str | None = None


class InfinityRerankResponse(BaseModel):
    object: Literal["rerank"] = "rerank"
    id: str
    created: int
    model: str
    results: list[InfinityResult]
    usage: Usage

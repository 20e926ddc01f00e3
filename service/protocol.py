"""Request and response models of the HTTP API, and query clean-up.

Requests are parsed straight from the body bytes with pydantic (JSON parse and
validation in one pass); the limits that depend on the settings (k, ef, queries per
request, characters per query) are checked against the ``Settings`` passed as the
validation context. Responses are plain dicts serialised once; the models below document
them in OpenAPI.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, Optional

from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, StringConstraints, ValidationInfo, field_validator,
                      model_validator)

# Queries get the same normalisation as training and keyword texts (artifact/text.py): control
# characters, zero-width marks and lone surrogates become spaces; a query left empty is refused.
from artifact.text import normalise_text
from retrieval.length_prior import MAX_WEIGHT as MAX_LENGTH_PRIOR

EncoderName = Literal["student", "teacher"]


def clean_texts(raw: list[str], field: str, limits, single: bool | None = None) -> list[str]:
    """Every text normalised (``artifact/text.py``) and checked against the character limit; a
    text left empty is refused. ``field`` names it in the sentence (``queries[2]``, or the bare
    field name when it was a single string)."""
    single = len(raw) == 1 and field == "query" if single is None else single
    cleaned = []
    for i, text in enumerate(raw):
        where = field if single else f"{field}[{i}]"
        if limits and len(text) > limits.max_query_chars:
            raise ValueError(f"{where} has {len(text)} characters, more than the limit of {limits.max_query_chars}")
        text = normalise_text(text)
        if not text:
            raise ValueError(f"{where} is empty or whitespace only")
        cleaned.append(text)
    return cleaned


def _limits(info: ValidationInfo):
    return info.context.get("settings") if info.context else None


class _QueriesIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    query: Optional[str] = Field(None, description="One query. Give either `query` or `queries`.")
    queries: Optional[list[str]] = Field(
        None, description="Several queries answered together (at most HLM_MAX_QUERIES).", min_length=1
    )
    encoder: EncoderName = Field("student", description="`student` (fast, default) or `teacher` (the baseline).")

    _texts: list[str] = PrivateAttr(default_factory=list)

    @field_validator("queries")
    @classmethod
    def _count(cls, value, info: ValidationInfo):
        limits = _limits(info)
        if value is not None and limits and len(value) > limits.max_queries:
            raise ValueError(f"at most {limits.max_queries} queries per request, got {len(value)}")
        return value

    @model_validator(mode="after")
    def _one_of(self, info: ValidationInfo):
        if (self.query is None) == (self.queries is None):
            raise ValueError("give exactly one of `query` or `queries`")
        raw = [self.query] if self.query is not None else self.queries
        self._texts = clean_texts(raw, "query" if self.query is not None else "queries", _limits(info))
        return self

    @property
    def texts(self) -> list[str]:
        """The queries after ``normalise_text`` (the same clean-up training texts get)."""
        return self._texts


# What the validator enforces, said in the schema: exactly one of `query` (a string) or
# `queries` (a list); `{}` and both together are a documented 422.
ONE_OF_QUERY = [{"required": ["query"], "properties": {"query": {"type": "string"}}},
                {"required": ["queries"], "properties": {"queries": {"type": "array"}}}]


def _integral(value):
    """JSON has one number type: 1.0 is the integer 1 (JSON Schema agrees); 1.5 stays invalid."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class SearchRequest(_QueriesIn):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "oneOf": ONE_OF_QUERY,
            "examples": [
                {"query": "cordless drill", "k": 10},
                {"queries": ["cordless drill", "garden hose 50 ft"], "k": 5, "encoder": "teacher"},
                {"query": "led light bulbs", "k": 20, "ef": 128},
                {"query": "garden hose", "k": 5, "filter": {"source": "hd"}, "attributes": True},
            ]
        },
    )

    k: Optional[int] = Field(None, description="Keywords per query, 1 to HLM_MAX_K (default HLM_DEFAULT_K).")
    ef: Optional[int] = Field(
        None, description="HNSW search breadth, 1 to HLM_MAX_EF (default the manifest's); raised to k if smaller."
    )
    filter: Optional[dict[str, Any]] = Field(
        None,
        description="Only keywords whose attributes match: attribute -> value (equality) or a non-empty list of "
        "values (any of); values are strings, numbers or booleans; a keyword without the attribute does not match. "
        "Applied inside the ANN search, so k answers come back whenever k keywords match.",
        examples=[{"source": "hd"}, {"market": ["en-US", "en-GB"], "active": True}],
    )
    attributes: bool = Field(
        False, description="Give each hit its keyword's `attributes` (what `filter` matches on). GET /v1/info lists "
        "the filterable attributes and their values; a filter naming an attribute no keyword carries is a 422."
    )
    fusion: Optional[Literal["rrf"]] = Field(
        None, description="`rrf`: fuse the dense hits with BM25 over the keyword texts (reciprocal rank fusion of "
        "each side's top 50; a hit's `score` is then the fused score, not a cosine). Lifted dev nDCG@10 ~9 % on the "
        "demo's judged queries; costs a BM25 lookup and a wider index search. A `filter` applies to both sides; "
        "keywords added live are found by the dense side only."
    )

    length_prior: Optional[float] = Field(
        None, ge=0.0, le=MAX_LENGTH_PRIOR, allow_inf_nan=False,
        description="Re-rank the search's ef candidates by cosine + "
        f"weight * ln(words of the keyword), 0 to {MAX_LENGTH_PRIOR} (default HLM_LENGTH_PRIOR; 0 = off); a hit's "
        "`score` is then that sum. 0.02 removed the static student's pull to short, broad keywords on the full "
        "index and lifted judged dev nDCG@10 over it 8.7 % (docs/RESULTS.md)."
    )

    @field_validator("filter")
    @classmethod
    def _filter(cls, value, info: ValidationInfo):
        if value is not None:
            limits = _limits(info)
            check_attributes(value, "filter", limits.max_attributes if limits else 16, lists=True)
            if not value:
                raise ValueError("filter is empty; leave it out to search every keyword")
        return value

    @field_validator("k", "ef", mode="before")
    @classmethod
    def _whole(cls, value):
        return _integral(value)

    @field_validator("k")
    @classmethod
    def _k_range(cls, value, info: ValidationInfo):
        limits = _limits(info)
        if value is not None:
            top = limits.max_k if limits else 10_000
            if not 1 <= value <= top:
                raise ValueError(f"k must be between 1 and {top}")
        return value

    @field_validator("ef")
    @classmethod
    def _ef_range(cls, value, info: ValidationInfo):
        limits = _limits(info)
        if value is not None:
            top = limits.max_ef if limits else 100_000
            if not 1 <= value <= top:
                raise ValueError(f"ef must be between 1 and {top}")
        return value


class EmbedRequest(_QueriesIn):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"oneOf": ONE_OF_QUERY,
                           "examples": [{"query": "cordless drill"}, {"queries": ["paint", "wood screws"], "encoder": "teacher"}]},
    )


# ---- responses (documentation; the handlers emit the same shape as plain dicts) ----


class Keyword(BaseModel):
    id: str = Field(description="Keyword id from the artifact's keyword store.")
    text: str
    score: float = Field(description="Cosine similarity between query and keyword vectors.")
    attributes: Optional[dict[str, Any]] = Field(
        None, description="The keyword's attributes; present only when the request set `attributes: true`.")


class Timings(BaseModel):
    queue_ms: float = Field(description="Time waiting in the encoder's queue.")
    encode_ms: float = Field(description="Encoder time of the batch this request rode in.")
    index_ms: float = Field(description="HNSW search time of that batch.")
    total_ms: float = Field(description="From request received to response ready, inside the server.")


class QueryResult(BaseModel):
    query: str = Field(description="The query as encoded (control characters replaced, ends stripped).")
    truncated: bool = Field(description="The query was longer than the model's token limit and was cut.")
    keywords: list[Keyword] = Field(description="Best first.")


class SearchResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "encoder": "student",
                    "precision": "int8",
                    "k": 2,
                    "ef": 64,
                    "results": [
                        {
                            "query": "cordless drill",
                            "truncated": False,
                            "keywords": [
                                {"id": "hd:100321", "text": "18-Volt Lithium-Ion Cordless Drill", "score": 0.81},
                                {"id": "mq:1502", "text": "cordless drills", "score": 0.77},
                            ],
                        }
                    ],
                    "timings": {"queue_ms": 0.05, "encode_ms": 2.1, "index_ms": 0.2, "total_ms": 2.6},
                }
            ]
        }
    )

    encoder: EncoderName
    precision: str
    k: int
    ef: int
    results: list[QueryResult]
    timings: Timings
    warnings: Optional[list[str]] = Field(
        None, description="Present only when there is something to say, e.g. a filter value no keyword has "
        "(a legitimate empty answer, not an error).")


class EmbedResult(BaseModel):
    query: str
    truncated: bool
    embedding: list[float] = Field(description="L2-normalised query vector in the teacher's space.")


class EmbedResponse(BaseModel):
    encoder: EncoderName
    precision: str
    dim: int
    results: list[EmbedResult]
    timings: Timings


class ErrorDetail(BaseModel):
    code: str = Field(examples=["invalid_request"])
    message: str = Field(examples=["Invalid request: k: k must be between 1 and 100."])


class ErrorResponse(BaseModel):
    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    408: {"model": ErrorResponse, "description": "The body did not arrive within HLM_BODY_TIMEOUT_S; the connection is closed."},
    413: {"model": ErrorResponse, "description": "Body larger than HLM_MAX_BODY_BYTES, or `too_large`: the request alone would "
          "hold its encoder longer than HLM_MAX_REQUEST_MS (send fewer or shorter queries)."},
    415: {"model": ErrorResponse, "description": "The body is not `Content-Type: application/json`, or is compressed."},
    422: {"model": ErrorResponse, "description": "Invalid JSON, wrong types, neither or both of `query`/`queries` "
          "(`{}` included), empty query, k/ef out of range, too many queries, a filter attribute no keyword carries."},
    429: {"model": ErrorResponse, "description": "Refused at once: `budget` (the work ahead would keep it past its "
          "encoder's budget), `client_share` (mostly this client's own queued work), `queue_full`; retry after "
          "Retry-After seconds (the expected wait, rounded up)."},
    503: {"model": ErrorResponse, "description": "Not ready yet (loading, warming up) or shutting down."},
}


# ---- POST /v1/embeddings: the OpenAI embeddings API's request and response ----


class EmbeddingsRequest(BaseModel):
    """OpenAI's `POST /v1/embeddings` body, as the `openai` client, LangChain and LlamaIndex send it."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"model": "student", "input": "cordless drill"},
                                        {"model": "teacher", "input": ["paint", "wood screws"], "encoding_format": "base64"}]},
    )

    # Token-id arrays are part of OpenAI's schema; they are accepted by the type only to be
    # refused with a sentence that says what to send instead (see _texts below).
    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="A text or a list of texts (at most HLM_MAX_QUERIES). Token-id arrays are not supported."
    )
    model: str = Field("student", description="An id from GET /v1/models (`hlm-student-static`, ...), `student`, `teacher`, "
                       "or either encoder's model name from /v1/info.")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="`float`: lists of numbers; `base64`: little-endian float32 bytes, as OpenAI sends them."
    )
    dimensions: Optional[int] = Field(None, description="Accepted only when equal to the encoders' dimension.")
    user: Optional[str] = Field(None, description="Accepted and ignored.")

    _texts: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _clean(self, info: ValidationInfo):
        raw = [self.input] if isinstance(self.input, str) else list(self.input)
        if not raw:
            raise ValueError("input is an empty list; give a text or a list of texts")
        if not all(isinstance(item, str) for item in raw):
            raise ValueError("input as token ids is not supported: this service tokenises with its own encoders, "
                             "send the texts (LangChain: OpenAIEmbeddings(check_embedding_ctx_length=False))")
        limits = _limits(info)
        if limits and len(raw) > limits.max_queries:
            raise ValueError(f"at most {limits.max_queries} inputs per request, got {len(raw)}")
        self._texts = clean_texts(raw, "input", limits, single=isinstance(self.input, str))
        return self

    @property
    def texts(self) -> list[str]:
        return self._texts


class EmbeddingObject(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="The L2-normalised vector, or its float32 bytes in base64.")


class EmbeddingsUsage(BaseModel):
    prompt_tokens: int = Field(description="Tokens the encoder read (after truncation to its token limit).")
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingObject]
    model: str = Field(description="The model name the request gave.")
    usage: EmbeddingsUsage


class ModelObject(BaseModel):
    id: str = Field(description="hlm-student-<family> or hlm-teacher-<base>, from the manifest (service/model_ids.py).",
                    examples=["hlm-student-static"])
    object: Literal["model"] = "model"
    created: int = Field(description="When the artifact was built, Unix seconds.")
    owned_by: str = Field(examples=["hlm"])


class ModelList(BaseModel):
    """OpenAI's `GET /v1/models` answer: what `client.models.list()` reads."""

    object: Literal["list"] = "list"
    data: list[ModelObject] = Field(description="The student, then the teacher.")


# ---- GET /v1/stats ----


class EncoderStats(BaseModel):
    served: int = Field(description="Requests answered 200 in the window.")
    refused: int = Field(description="Requests shed (429, 503) in the window.")
    errors: int = Field(description="Other error answers in the window (after the encoder was known).")
    served_rps: float
    p50_ms: Optional[float] = Field(description="Of the served requests, from the histogram's buckets (PromQL's interpolation).")
    p99_ms: Optional[float]


class StatsPoint(BaseModel):
    ago_s: float
    served_rps: float
    p99_ms: Optional[float]


class StatsResponse(BaseModel):
    status: str = Field(description="The service's phase, as /readyz says it.")
    window_s: float = Field(description="Seconds the figures cover (the ring's oldest reading to now).")
    target_window_s: float
    encoders: dict[str, EncoderStats]
    series: dict[str, list[StatsPoint]] = Field(description="Per interval between readings, oldest first.")


# ---- GET /v1/judgments ----


class JudgmentsResponse(BaseModel):
    available: bool = Field(description="Whether this artifact carries judged queries (artifact/judged.py).")
    note: Optional[str] = Field(None, description="Why not, when it does not.")
    split: Optional[str] = Field(None, description="`dev`: held out from every training phase.")
    scale: Optional[str] = None
    count: Optional[int] = Field(None, description="Without `query`: how many judged queries.")
    queries: Optional[list[str]] = Field(None, description="Without `query`: every judged query.")
    query: Optional[str] = Field(None, description="With `query`: the query after the clean-up searches get.")
    judged: Optional[bool] = None
    labels: Optional[dict[str, float]] = Field(None, description="keyword id -> relevance, 1 (irrelevant) to 3.")


# ---- attributes: what a keyword carries and a filter matches ----

ATTRIBUTE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
KEYWORD_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:@+\-]{0,127}$"
MAX_VALUE_CHARS = 256
MAX_ANY_OF = 64
# Numbers, integer or not, lie in one range: -2^63 to the largest double below 2^63. Milvus keys
# an attribute by its value (retrieval/milvus.py: attribute_key) and refuses one outside
# -2^63..2^63; admitted here, 1e19 failed inside the search batch (a 500 for every batch-mate)
# or after an upsert's fsync (#28 finding 3). The top is a double, not 2^63 - 1, so that the
# range is the same whether a client (or a schema tool) reads a number as an integer or as a
# double: 2^63 - 1 is 2^63 as a double. tests/retrieval/test_milvus.py pins the agreement.
_INT64 = 2**63
NUMBER_MIN, NUMBER_MAX = -_INT64, int(math.nextafter(float(_INT64), 0.0))  # 9223372036854774784


def _check_value(value: Any, where: str) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{where}: {value} is not a finite number")
        if not NUMBER_MIN <= value <= NUMBER_MAX:
            raise ValueError(f"{where}: the number {value!r} does not fit 64 bits: numbers lie between -2^63 and "
                             f"{NUMBER_MAX} (the largest double below 2^63), the range the index holds")
        return
    if isinstance(value, str):
        if len(value) > MAX_VALUE_CHARS:
            raise ValueError(f"{where}: a string value has at most {MAX_VALUE_CHARS} characters, got {len(value)}")
        if any("\ud800" <= ch <= "\udfff" for ch in value):  # valid JSON escapes, but not text: no UTF-8 for them
            raise ValueError(f"{where}: a string value holds a lone surrogate (\\ud800-\\udfff), which is not text")
        return
    kind = "null" if value is None else {dict: "an object", list: "a list"}.get(type(value), type(value).__name__)
    raise ValueError(f"{where}: a value must be a string, number or boolean, not {kind}")


def attributes_schema(most: int, *, lists: bool) -> dict:
    """The JSON Schema of what ``check_attributes`` accepts (the API documents it with this)."""
    scalar = {"anyOf": [{"type": "string", "maxLength": MAX_VALUE_CHARS},
                        {"type": "number", "minimum": NUMBER_MIN, "maximum": NUMBER_MAX}, {"type": "boolean"}]}
    value = {"anyOf": [scalar, {"type": "array", "items": scalar, "minItems": 1, "maxItems": MAX_ANY_OF}]} if lists else scalar
    return {"type": "object", "maxProperties": most, "additionalProperties": value,
            "propertyNames": {"pattern": f"^{ATTRIBUTE_NAME.pattern}$"}}


def check_attributes(mapping: dict, where: str, most: int, *, lists: bool) -> None:
    """Names a bounded identifier, values scalars (a filter: or a non-empty bounded list of them)."""
    if len(mapping) > most:
        raise ValueError(f"{where} has {len(mapping)} attributes, more than the limit of {most}")
    for name, value in mapping.items():
        if not ATTRIBUTE_NAME.fullmatch(name):
            raise ValueError(f"{where}: attribute name {name[:80]!r} must be a letter or _ then up to 63 letters, "
                             "digits or _")
        if lists and isinstance(value, list):
            if not 1 <= len(value) <= MAX_ANY_OF:
                raise ValueError(f"{where}.{name}: a list of values (any of) holds 1 to {MAX_ANY_OF} values, got {len(value)}")
            for item in value:
                _check_value(item, f"{where}.{name}")
        else:
            _check_value(value, f"{where}.{name}")


# ---- POST /admin/keywords, GET /admin/keywords/{id} ----


KeywordId = Annotated[str, StringConstraints(pattern=KEYWORD_ID)]


class KeywordIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    id: KeywordId = Field(description="1-128 characters: letters, digits and _ . : @ + - (not first).")
    text: str = Field(description="The keyword text (normalised like queries; at most HLM_MAX_KEYWORD_CHARS).")
    attributes: dict[str, Any] = Field(default_factory=dict, description="attribute -> string, number or boolean.")

    @model_validator(mode="after")
    def _clean(self, info: ValidationInfo):
        limits = _limits(info)
        most = limits.max_keyword_chars if limits else 1000
        if len(self.text) > most:
            raise ValueError(f"text has {len(self.text)} characters, more than the limit of {most}")
        self.text = normalise_text(self.text)
        if not self.text:
            raise ValueError("text is empty or whitespace only")
        check_attributes(self.attributes, "attributes", limits.max_attributes if limits else 16, lists=False)
        return self


class KeywordsRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{
            "upsert": [{"id": "kw:17", "text": "cordless drill 20v",
                        "attributes": {"market": "en-US", "campaign": "c-17", "match_type": "broad", "active": True}}],
            "delete": ["kw:3"],
        }]},
    )

    upsert: list[KeywordIn] = Field(default_factory=list, description="Keywords to add or replace (by id).")
    delete: list[KeywordId] = Field(default_factory=list, description="Ids to remove (absent ones are not counted).")

    @model_validator(mode="after")
    def _distinct(self):
        if not self.upsert and not self.delete:
            raise ValueError("give at least one keyword to upsert or one id to delete")
        seen: set[str] = set()
        for kid in [k.id for k in self.upsert] + self.delete:
            if kid in seen:
                raise ValueError(f"the id {kid!r} appears more than once; a request changes each keyword once")
            seen.add(kid)
        return self


class KeywordsResponse(BaseModel):
    upserted: int
    deleted: int = Field(description="How many of the ids to delete were present.")
    sequence: int = Field(description="The change's place in the write-ahead log (increasing).")


class KeywordOut(BaseModel):
    id: str
    text: str
    attributes: dict[str, Any]

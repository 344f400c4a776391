"""The wire schema of the attribution API, v1. The server imports these very models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MAX_TOP_K = 1000
MAX_FILTER_FIELDS = 16
MAX_FILTER_VALUES = 1024

# A metadata value a filter can compare with (fields holding lists or objects are not
# filterable). Exact types: true is not 1, 1 is 1.0.
Scalar = str | int | float | bool


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AnyOf(_Strict):
    """``{"in": [v1, v2, ...]}``: the field equals one of the values."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)
    any_of: list[Scalar] = Field(
        ..., alias="in", min_length=1, max_length=MAX_FILTER_VALUES, description="Allowed values."
    )


class Prefix(_Strict):
    """``{"prefix": "bbc/"}``: the (string) field starts with this."""

    prefix: str = Field(..., min_length=1)


# One field's condition: a value (equality), ``{"in": [...]}`` or ``{"prefix": "..."}``.
Condition = Scalar | AnyOf | Prefix


class AttributionQuery(_Strict):
    """One (prompt, completion) to attribute."""

    prompt: str = Field("", description="Context; its tokens carry no loss.")
    completion: str = Field(
        ..., min_length=1, description="The text whose likelihood is attributed."
    )
    top_k: int = Field(10, ge=1, le=MAX_TOP_K, description="How many proponents to return.")
    opponents: bool = Field(False, description="Also return the k most opposing examples.")
    return_text: bool = Field(True, description="Include each example's text.")
    layers: list[str] | None = Field(
        None, min_length=1, description="Score with these tracked layers only (default: all)."
    )
    filter: dict[str, Condition] | None = Field(
        None,
        min_length=1,
        max_length=MAX_FILTER_FIELDS,
        description=(
            "Rank only the examples whose metadata match every condition: "
            '{"topic": "sport"}, {"topic": {"in": ["sport", "tech"]}}, '
            '{"id": {"prefix": "doc1"}}. `id` is the example id; the other names are the '
            "metadata fields the index offers (GET /v1/index, `filter_fields`)."
        ),
    )
    explain: bool = Field(
        False,
        description=(
            "Also explain each returned example: its score split over layers and over its "
            "tokens, and over the completion's tokens (docs/server.md, Explanations)."
        ),
    )


class BatchAttributionRequest(_Strict):
    """Several queries answered by one scan; results come back under ``batch`` in order."""

    queries: list[AttributionQuery] = Field(..., min_length=1, max_length=64)


# Body of POST /v1/attributions: exactly one of the two forms (extra fields are refused,
# so a body mixing them matches neither).
AttributionRequest = AttributionQuery | BatchAttributionRequest


def queries_of(body: AttributionRequest) -> list[AttributionQuery]:
    return list(body.queries) if isinstance(body, BatchAttributionRequest) else [body]


class TokenSpan(BaseModel):
    """A token of a text: characters [start, end) of that text, and its share of a score."""

    text: str
    start: int
    end: int
    score: float


class LayerPart(BaseModel):
    layer: str
    score: float


class Explanation(BaseModel):
    """Why one example scored as it did (``explain: true``)."""

    layers: list[LayerPart] = Field(
        description="The stored score split over the tracked layers (they sum to `score`)."
    )
    tokens: list[TokenSpan] = Field(
        description=(
            "The example's tokens with their parts of `recomputed_score`; `start`/`end` index "
            "the example's `text`."
        )
    )
    recomputed_score: float = Field(
        description=(
            "The score recomputed from the example's dense projected gradient (no rank-c "
            "truncation, no storage rounding): the sum of the token parts."
        )
    )
    tokens_match: bool = Field(
        description="The re-tokenized text has the token count the index recorded."
    )
    completion: list[float] = Field(
        description=(
            "This example's stored score split over the query's explained completion tokens "
            "(`explanation.completion_tokens` of the query), in their order."
        )
    )


class ResultItem(BaseModel):
    rank: int
    index: int = Field(description="Row of the example in the index.")
    id: str
    score: float
    text: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    explanation: Explanation | None = None


class QueryExplanation(BaseModel):
    """The query's side of an explanation."""

    completion_tokens: list[TokenSpan] = Field(
        description=(
            "The explained completion tokens (characters of `completion`); `score` is the "
            "token's own loss (cross-entropy, nats)."
        )
    )
    capped: bool = Field(
        description="The completion had more scored tokens than are explained (the first are)."
    )


class QueryInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    unscored_tokens: int = Field(
        0,
        description=(
            "Completion tokens with no loss: with an empty prompt the first completion token "
            "has no context to be predicted from, so it is not scored (1); otherwise 0."
        ),
    )
    loss: float = Field(description="Summed cross-entropy of the scored completion tokens.")
    energy_kept: float | None = Field(None, description="Low-rank query scans only.")
    matching: int | None = Field(
        default=None, description="Examples that pass the query's filter (filtered queries only)."
    )
    explanation: QueryExplanation | None = None


class Timings(BaseModel):
    """Milliseconds. Scan figures are for the shared pass that served this query's batch."""

    queue_ms: float = 0.0
    featurize_ms: float = 0.0
    precondition_ms: float = 0.0
    scan_ms: float = 0.0
    scan_wait_ms: float = Field(
        0.0, description="Time the scorer waited for data (I/O not hidden)."
    )
    total_ms: float = 0.0
    batch_size: int = 1
    scan_bytes: int = 0
    scan_blocks: int = 0


class IndexSummary(BaseModel):
    name: str
    n_examples: int
    format_version: int
    residency: str


class AttributionResult(BaseModel):
    results: list[ResultItem]
    opponents: list[ResultItem] | None = None
    query: QueryInfo
    index: IndexSummary
    timings: Timings


class Coverage(BaseModel):
    """Which shards answered (coordinator responses only)."""

    shards: int
    answered: int
    missing: list[str] = Field(default_factory=list)
    partial: bool = False


class AttributionResponse(BaseModel):
    """Single form: one result at the top level. Batch form: ``batch`` in query order."""

    results: list[ResultItem] | None = None
    opponents: list[ResultItem] | None = None
    query: QueryInfo | None = None
    index: IndexSummary
    timings: Timings
    batch: list[AttributionResult] | None = None
    coverage: Coverage | None = None


class FilterField(BaseModel):
    name: str
    kind: str = Field(description="`id`, `string`, `number`, `boolean` or `mixed`.")
    distinct: int = Field(description="Distinct values among the examples (0 for `id`).")
    values: list[Scalar] | None = Field(
        default=None, description="The values, where there are few (a menu for a page)."
    )


class LayerInfo(BaseModel):
    name: str
    in_features: int
    out_features: int
    d1: int
    d2: int
    rank: int
    dense: bool
    curvature_rank: int
    damping: float


class IndexInfo(BaseModel):
    name: str
    n_examples: int
    format_version: int
    created_at: str
    residency: str
    bytes_per_example: int
    storage_dtype: str
    method: str
    config: dict[str, Any]
    model: dict[str, Any]
    dataset: dict[str, Any]
    layers: list[LayerInfo]
    filter_fields: list[FilterField] = Field(default_factory=list)
    path: str | None = None


class Health(BaseModel):
    status: str
    detail: str | None = None


class Problem(BaseModel):
    """RFC 9457 problem details: the body of every error response."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None

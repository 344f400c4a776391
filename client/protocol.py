"""The wire schema of the attribution API, v1. The server imports these very models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MAX_TOP_K = 1000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


class BatchAttributionRequest(_Strict):
    """Several queries answered by one scan; results come back under ``batch`` in order."""

    queries: list[AttributionQuery] = Field(..., min_length=1, max_length=64)


# Body of POST /v1/attributions: exactly one of the two forms (extra fields are refused,
# so a body mixing them matches neither).
AttributionRequest = AttributionQuery | BatchAttributionRequest


def queries_of(body: AttributionRequest) -> list[AttributionQuery]:
    return list(body.queries) if isinstance(body, BatchAttributionRequest) else [body]


class ResultItem(BaseModel):
    rank: int
    index: int = Field(description="Row of the example in the index.")
    id: str
    score: float
    text: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


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

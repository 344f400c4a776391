"""The attribution service: validate → featurize → precondition → scan → results."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from lorif_serve.client.protocol import (
    AttributionQuery,
    AttributionResult,
    IndexSummary,
    Timings,
)
from lorif_serve.indexer.core.kronecker import AnyCurvature
from lorif_serve.indexer.core.query import ScanQuery, precondition
from lorif_serve.indexer.store.reader import IndexReader
from lorif_serve.server.answers import AnswerWriter
from lorif_serve.server.batcher import Answered, WorkItem
from lorif_serve.server.engine import ScanEngine, ScanResult
from lorif_serve.server.errors import ProblemError
from lorif_serve.server.explain import Explainer
from lorif_serve.server.featurizer import Encoded, Featurizer, ModelFeaturizer
from lorif_serve.server.filters import FieldColumns, MaskCache
from lorif_serve.server.index_info import describe_index
from lorif_serve.server.metrics import ServerMetrics


@dataclass
class QueryOptions:
    mode: str = "exact"  # exact | energy | rank
    energy: float = 0.99
    rank: int = 8
    truncate_to_factor_rank: bool = False


class AttributionService:
    """Owns the index, the featurizer and the engine. ``process`` runs on the scan thread only."""

    def __init__(
        self,
        reader: IndexReader,
        featurizer: Featurizer,
        engine: ScanEngine,
        metrics: ServerMetrics,
        max_query_tokens: int = 2048,
        options: QueryOptions | None = None,
        expose_paths: bool = False,
    ) -> None:
        self.reader, self.featurizer, self.engine, self.metrics = (
            reader,
            featurizer,
            engine,
            metrics,
        )
        self.max_query_tokens = max_query_tokens
        self.options = options or QueryOptions()
        self.specs = reader.layers
        self.layer_names = {spec.name for spec in self.specs}
        self.curvatures: dict[str, AnyCurvature] = {
            spec.name: reader.curvature(i).to(engine.device, torch.float32)
            for i, spec in enumerate(self.specs)
        }
        self.name = Path(reader.path).stem
        self.summary = IndexSummary(
            name=self.name,
            n_examples=reader.n_examples,
            format_version=reader.format_version,
            residency=engine.residency,
        )
        self.explainer = (
            Explainer(
                reader,
                featurizer.capture,
                featurizer.tokenizer,
                featurizer.device,
                self.curvatures,
                featurizer.max_batch_tokens,
            )
            if isinstance(featurizer, ModelFeaturizer)
            else None  # a stand-in featurizer (tests) has no model to explain with
        )
        self.answers = AnswerWriter(reader, self.summary)
        self.fields = FieldColumns.from_reader(reader)
        self.masks = MaskCache(self.fields)
        self.info = describe_index(
            reader, self.curvatures, engine.residency, self.fields.describe(), expose_paths
        )
        metrics.index_info.info(
            {
                "name": self.name,
                "n": str(reader.n_examples),
                "residency": engine.residency,
                "bytes": str(engine.total_bytes),
            }
        )

    # ---- request thread ------------------------------------------------------------------
    def encode(self, query: AttributionQuery) -> Encoded:
        """Tokenize and check limits before queueing (→ 413 / 422)."""
        if query.layers is not None:
            unknown = sorted(set(query.layers) - self.layer_names)
            if unknown:
                raise ProblemError(
                    422,
                    f"layers: not tracked by this index: {unknown[:5]}; the tracked layers "
                    f"(exact names) are: {', '.join(spec.name for spec in self.specs)}",
                )
        if query.filter is not None:
            self.fields.check(query.filter)
        if query.explain and self.explainer is None:
            raise ProblemError(422, "explain: this server has no model to explain with")
        encoded = self.featurizer.encode(query.prompt, query.completion)
        tokens = len(encoded[0])
        if tokens > self.max_query_tokens:
            raise ProblemError(
                413, f"query has {tokens} tokens; the limit is {self.max_query_tokens}"
            )
        if encoded[1] >= tokens:
            raise ProblemError(422, "completion: no tokens to attribute")
        return encoded

    # ---- scan thread ---------------------------------------------------------------------
    def process(self, items: Sequence[WorkItem]) -> Answered:
        """Answer one batch: one featurize pass (split by the token budget), one scan."""
        began = time.perf_counter()
        grads, losses = self.featurizer.gradients([item.encoded for item in items])
        featurized = time.perf_counter()
        truncate = None
        if self.options.truncate_to_factor_rank:
            truncate = max(1, min(spec.rank for spec in self.specs))
        hq = precondition(self.specs, self.curvatures, grads, query_rank=truncate)
        self._mask_layers(hq, items)
        scan_query = self._scan_query(hq)
        preconditioned = time.perf_counter()
        top_k = max(item.query.top_k for item in items)
        bottom_k = max((item.query.top_k for item in items if item.query.opponents), default=0)
        allowed, matching = self._allowed(items)
        result = self.engine.scan(scan_query, top_k, bottom_k, allowed)
        self._record(result, featurized - began)
        timings = Timings(
            featurize_ms=1000 * (featurized - began),
            precondition_ms=1000 * (preconditioned - featurized),
            scan_ms=1000 * result.seconds,
            scan_wait_ms=1000 * result.wait_seconds,
            batch_size=len(items),
            scan_bytes=result.bytes,
            scan_blocks=result.blocks,
        )
        energy = self._energy_kept(scan_query, len(items))
        results = self.answers.write(items, result, timings, losses, energy, began, matching)
        for row, (item, answer) in enumerate(zip(items, results, strict=True)):
            if item.query.explain:
                self._explain(item, answer, {name: h[row] for name, h in hq.items()})
        return Answered(results, featurized - began)

    def _allowed(self, items: Sequence[WorkItem]) -> tuple[torch.Tensor | None, list[int | None]]:
        """(B, N) row masks of the batch's filters (None: no query filters), and counts."""
        if all(item.query.filter is None for item in items):
            return None, [None] * len(items)
        everything = torch.ones(self.reader.n_examples, dtype=torch.bool)
        masks = [
            everything if item.query.filter is None else self.masks.get(item.query.filter)
            for item in items
        ]
        counts = [
            None if item.query.filter is None else int(m.sum())
            for item, m in zip(items, masks, strict=True)
        ]
        return torch.stack(masks), counts

    def _explain(
        self, item: WorkItem, answer: AttributionResult, hq: dict[str, torch.Tensor]
    ) -> None:
        """Attach explanations to the returned examples (proponents, then opponents)."""
        assert self.explainer is not None
        chosen = item.query.layers
        scored = {name: h for name, h in hq.items() if chosen is None or name in chosen}
        shown = [*answer.results, *(answer.opponents or [])]
        records = self.reader.examples([r.index - self.reader.row_offset for r in shown])
        query, explanations = self.explainer.explain(
            item.encoded, item.query.completion, scored, records
        )
        answer.query.explanation = query
        for result, explanation in zip(shown, explanations, strict=True):
            result.explanation = explanation

    def _mask_layers(self, hq: dict[str, torch.Tensor], items: Sequence[WorkItem]) -> None:
        """A query restricted to some layers scores zero through the others: exact, one GEMM."""
        for row, item in enumerate(items):
            if item.query.layers is not None:
                for name in self.layer_names - set(item.query.layers):
                    hq[name][row] = 0

    def _scan_query(self, hq: dict[str, torch.Tensor]) -> ScanQuery:
        if self.options.mode == "energy":
            return ScanQuery(hq, energy=self.options.energy)
        if self.options.mode == "rank":
            return ScanQuery(hq, rank=self.options.rank)
        return ScanQuery(hq)

    @staticmethod
    def _energy_kept(query: ScanQuery, batch: int) -> list[float | None]:
        if not query.energy_kept:
            return [None] * batch
        stacked = torch.stack([kept.float().cpu() for kept in query.energy_kept.values()])
        return [float(v) for v in stacked.mean(dim=0)]

    def _record(self, result: ScanResult, featurize_seconds: float) -> None:
        m = self.metrics
        m.featurize_seconds.observe(featurize_seconds)
        m.scan_seconds.observe(result.seconds)
        m.scan_wait_seconds.inc(result.wait_seconds)
        m.scan_bytes.inc(result.bytes)
        m.scan_rows.inc(self.engine.n)
        m.scan_blocks.inc(result.blocks)
        m.scan_throughput.set(result.bytes / max(result.seconds, 1e-9))

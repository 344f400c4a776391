"""The batch's answers: stored records of the returned rows, read once per batch."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lorif_serve.client.protocol import (
    AttributionResult,
    IndexSummary,
    QueryInfo,
    ResultItem,
    Timings,
)
from lorif_serve.indexer.store.reader import ExampleRecord, IndexReader
from lorif_serve.server.batcher import WorkItem
from lorif_serve.server.engine import ScanResult


class AnswerWriter:
    """Turns one batch's scan result into one ``AttributionResult`` per query."""

    def __init__(self, reader: IndexReader, summary: IndexSummary) -> None:
        self.reader, self.summary = reader, summary

    def write(
        self,
        items: Sequence[WorkItem],
        scan: ScanResult,
        timings: Timings,
        losses: torch.Tensor,
        energy: Sequence[float | None],
        began: float,
        matching: Sequence[int | None],
    ) -> list[AttributionResult]:
        """``matching``: per query, the rows its filter allows (None: no filter)."""
        records = self._records(items, scan, matching)
        return [
            self._result(
                row,
                item,
                scan,
                timings,
                float(losses[row]),
                energy[row],
                began,
                matching[row],
                records,
            )
            for row, item in enumerate(items)
        ]

    def _records(
        self, items: Sequence[WorkItem], scan: ScanResult, matching: Sequence[int | None]
    ) -> dict[int, ExampleRecord]:
        """The stored records of every row the batch returns, read in one pass (reading
        per query cost ≈ 1.2 ms of h5py calls each)."""
        wanted: set[int] = set()
        for row, item in enumerate(items):
            k = self._returned(item, matching[row])
            wanted.update(scan.top_rows[row, :k].tolist())
            if item.query.opponents and scan.bottom_rows is not None:
                wanted.update(scan.bottom_rows[row, :k].tolist())
        rows = sorted(wanted)
        return dict(zip(rows, self.reader.examples(rows), strict=True))

    def _returned(self, item: WorkItem, matching: int | None) -> int:
        """How many examples the query gets back: past a filter's matches the scan's k
        are filler."""
        k = min(item.query.top_k, self.reader.n_examples)
        return k if matching is None else min(k, matching)

    def _result(
        self,
        row: int,
        item: WorkItem,
        scan: ScanResult,
        timings: Timings,
        loss: float,
        energy: float | None,
        began: float,
        matching: int | None,
        records: dict[int, ExampleRecord],
    ) -> AttributionResult:
        """``matching``: rows the query's filter allows (None: no filter)."""
        k = self._returned(item, matching)
        with_text = item.query.return_text
        results = self._items(scan.top_scores[row, :k], scan.top_rows[row, :k], with_text, records)
        opponents = None
        if item.query.opponents and scan.bottom_scores is not None and scan.bottom_rows is not None:
            opponents = self._items(
                scan.bottom_scores[row, :k], scan.bottom_rows[row, :k], with_text, records
            )
        tokens, start = item.encoded
        prompt_tokens = start if item.query.prompt else 0  # an empty prompt still starts at 1
        info = QueryInfo(
            prompt_tokens=prompt_tokens,
            completion_tokens=len(tokens) - prompt_tokens,
            unscored_tokens=start - prompt_tokens,  # the first token when there is no prompt
            loss=loss,
            energy_kept=energy,
            matching=matching,
        )
        own = timings.model_copy(update={"queue_ms": 1000 * (began - item.enqueued)})
        return AttributionResult(
            results=results, opponents=opponents, query=info, index=self.summary, timings=own
        )

    def _items(
        self,
        scores: torch.Tensor,
        rows: torch.Tensor,
        with_text: bool,
        records: dict[int, ExampleRecord],
    ) -> list[ResultItem]:
        return [
            ResultItem(
                rank=rank + 1,
                index=rec.row + self.reader.row_offset,
                id=rec.id,
                score=score,
                text=rec.text if with_text else None,
                metadata=rec.metadata,
            )
            for rank, (rec, score) in enumerate(
                zip((records[r] for r in rows.tolist()), scores.tolist(), strict=True)
            )
        ]

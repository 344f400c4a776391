"""CPU scans of int8 rows with the compiled kernel (docs/server.md, "Scan kernels").

``fused``: every row scored exactly, in float32, by ``lorif_scan_int8``.
``bounded``: every row scored with the int8-quantized query (integer dot products, 4× the
float rate) together with a bound on the difference from the exact score; the rows whose
interval [approx − margin, approx + margin] can reach the k-th best lower bound (or, for
opponents, the k-th smallest upper bound) are rescored exactly by the fused kernel. A row's
exact score does not depend on which other rows are scored with it, so the answer — rows,
order and scores — is bit for bit the one the ``fused`` scan gives.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from lorif_serve.indexer.core.query import ScanQuery
from lorif_serve.indexer.store.reader import IndexReader
from lorif_serve.server.kernels.fused import FusedInt8Scan
from lorif_serve.server.kernels.prepared import PreparedQuery
from lorif_serve.server.row_norms import RowNorms
from lorif_serve.server.tiled import TiledRows, stream_bounded, stream_levels
from lorif_serve.server.topk import RowMerger, allowed_at
from lorif_serve.server.torch_threads import serial_torch

# Past this share of a block's rows kept as candidates the bound does not pay (rescoring them
# costs more than the pass saved): the rest of that scan is scored exactly.
_MAX_KEPT = 0.2
_WARM_ROWS = 1 << 16  # streamed rows whose norms are computed at a time at start-up

# (raw int8 rows, first row, seconds the scan waited for them, release the buffer or None)
RawBlock = tuple[torch.Tensor, int, float, "Callable[[], None] | None"]


@dataclass
class FusedOutcome:
    top: tuple[torch.Tensor, torch.Tensor]  # (B, k) scores descending, rows
    bottom: tuple[torch.Tensor, torch.Tensor] | None
    wait_seconds: float
    blocks: int
    rescored: int  # rows scored exactly after the bounded pass (all rows for ``fused``)


def _best_of(
    scores: torch.Tensor, rows: torch.Tensor, k: int, largest: bool, allowed: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best (B, k) of scored rows, padded with ∓inf at row 0 where fewer than k were
    scored (a query whose filter leaves few candidates): every query's part has width k."""
    merger = RowMerger(k, largest, allowed)
    fill = float("-inf") if largest else float("inf")
    merger.add(torch.full((scores.shape[0], k), fill), torch.zeros(k, dtype=torch.long))
    merger.add(scores, rows)
    return merger.result()


def _undecided(
    low: torch.Tensor,
    high: torch.Tensor,
    top: torch.Tensor,
    bottom: torch.Tensor | None,
    ok: torch.Tensor | None,
) -> torch.Tensor:
    """(B, m) rows whose interval [low, high] reaches a query's cut — its k-th best lower
    bound ``top`` (B,) or, for opponents, its k-th smallest upper bound ``bottom`` — among
    the rows its mask ``ok`` (B, m) allows: the rows that can still enter its k."""
    reach = high >= top[:, None]
    if bottom is not None:
        reach |= low <= bottom[:, None]
    return reach if ok is None else reach & ok


class FusedScanner:
    """Runs one scan of raw int8 blocks with the compiled kernel.

    Args:
        kernel: the loaded kernel.
        reader: the open index (for rescoring rows that are not resident).
        resident: all rows in memory, or ``None`` (then candidates are read from the index).
        bounded: use the bounded pass (the kernel must have it).
    """

    def __init__(
        self,
        kernel: FusedInt8Scan,
        reader: IndexReader,
        resident: torch.Tensor | None,
        bounded: bool,
    ) -> None:
        self.kernel, self.reader, self.resident = kernel, reader, resident
        self.bounded = bounded and kernel.has_bounded
        # Indexes with fewer rows are scanned exactly: the bounded scan's query
        # preparation costs more than its pass saves there (``break_even``).
        self.exact_below = 0.0
        self.norms = RowNorms(kernel, reader.layout.layers, reader.n_examples)
        self.tiles: TiledRows | None = None
        # After a one-level tiled pass, the second query level on the tiles holding undecided
        # rows (docs/server.md, "Two query levels"); "0": one level (side-by-side benchmarks).
        self.refine = os.environ.get("LORIF_REFINE", "1") != "0"

    def prepare(self, query: ScanQuery, bounded: bool = True) -> PreparedQuery:
        """The kernel's form of ``query``; ``bounded``: with the bounded pass's int8 levels."""
        return self.kernel.prepare(self.reader.layout, self.reader.codec, query.hq, bounded)

    @property
    def bounds(self) -> bool:
        """Whether a scan takes the bounded pass (else every row is scored exactly)."""
        small = self.reader.n_examples < self.exact_below
        return self.bounded and not small

    def warm(self, every_layer: ScanQuery) -> None:
        """Start-up: the resident rows' norms (all layers), then the rows put in tiles; for
        streamed rows every layer's norms, read from the map a block at a time, so that the
        first query does not pay them."""
        if not self.bounded:
            return
        prepared = self.prepare(every_layer)
        if self.resident is None:
            layers, n = tuple(every_layer.hq), self.reader.n_examples
            for start in range(0, n, _WARM_ROWS):
                rows = self.reader.rows(start, min(start + _WARM_ROWS, n))
                self.norms.block(prepared, layers, rows, start, resident=False)
            return
        self.norms.set_resident(self.kernel.row_norms(prepared, self.resident))
        if os.environ.get("LORIF_ROW_TILES", "1") != "0":  # "0": row order (diagnostics)
            self.tiles = TiledRows(self.kernel, prepared.meta, self.resident)

    def scan(
        self,
        query: ScanQuery,
        blocks: Iterator[RawBlock],
        top_k: int,
        bottom_k: int,
        allowed: torch.Tensor | None = None,
    ) -> FusedOutcome:
        """``allowed`` (B, N) bool: rank only these rows per query (metadata filters)."""
        if self.bounded and self.resident is not None and not self.norms.resident_ready:
            self.warm(every_layer(self.reader))
        bounds = self.bounds
        prepared = self.prepare(query, bounded=bounds)
        with serial_torch():
            if not bounds:
                return self._exact(prepared, blocks, top_k, bottom_k, allowed)
            return self._bounded(prepared, tuple(query.hq), blocks, top_k, bottom_k, allowed)

    def _exact(
        self,
        prepared: PreparedQuery,
        blocks: Iterator[RawBlock],
        top_k: int,
        bottom_k: int,
        allowed: torch.Tensor | None,
    ) -> FusedOutcome:
        best = RowMerger(top_k, largest=True, allowed=allowed)
        worst = RowMerger(bottom_k, largest=False, allowed=allowed) if bottom_k else None
        wait, count, rows_seen, out = 0.0, 0, 0, None
        for raw, start, waited, release in blocks:
            wait += waited
            if out is None or out.shape[1] < raw.shape[0]:
                out = torch.empty(prepared.batch, raw.shape[0], dtype=torch.float32)
            scores = self.kernel.score(prepared, raw, out)
            numbers = torch.arange(start, start + raw.shape[0])
            best.add(scores, numbers)
            if worst is not None:
                worst.add(scores, numbers)
            if release is not None:
                release()
            count += 1
            rows_seen += raw.shape[0]
        bottom = worst.result() if worst is not None else None
        return FusedOutcome(best.result(), bottom, wait, count, rows_seen)

    def _bounded(
        self,
        prepared: PreparedQuery,
        layers: tuple[str, ...],
        blocks: Iterator[RawBlock],
        top_k: int,
        bottom_k: int,
        allowed: torch.Tensor | None,
    ) -> FusedOutcome:
        def make(k: int, largest: bool) -> RowMerger:
            return RowMerger(k, largest, allowed)

        lower = make(top_k, True)  # the k best lower bounds
        upper = make(bottom_k, False) if bottom_k else None
        # Rows scored exactly once the bound stops pruning (see _MAX_KEPT).
        exact_best = make(top_k, True)
        exact_worst = make(bottom_k, False) if bottom_k else None
        kept_rows: list[torch.Tensor] = []
        # Streamed blocks are gone once released: the candidates' stored rows are copied
        # as they are found, not read back one by one for the rescoring.
        kept_stored: list[torch.Tensor] | None = [] if self.resident is None else None
        kept_bounds: list[tuple[torch.Tensor, torch.Tensor]] = []
        wait, count, exact_rows, exact_mode = 0.0, 0, 0, False
        levels = 0  # query levels of the tiled pass, chosen at the first block
        approx = margin = None
        for raw, start, waited, release in blocks:
            wait += waited
            n = raw.shape[0]
            if approx is None or margin is None or approx.shape[1] < n:
                approx = torch.empty(prepared.batch, n, dtype=torch.float32)
                margin = torch.empty_like(approx)
            numbers = torch.arange(start, start + n)
            count += 1
            if exact_mode:  # an exact score is its own interval
                if self.tiles is not None:
                    self.tiles.score(prepared, start, start + n, approx)
                    scores = approx[:, :n]
                else:
                    scores = self.kernel.score(prepared, raw, approx)
                for merger in (lower, exact_best, upper, exact_worst):
                    if merger is not None:
                        merger.add(scores, numbers)
                exact_rows += n
                if release is not None:
                    release()
                continue
            norms = self.norms.block(prepared, layers, raw, start, self.resident is not None)
            ok = allowed_at(allowed, numbers) if allowed is not None else None
            if self.tiles is not None:
                if levels == 0:  # blocks of resident rows start at row 0
                    levels = self.tiles.levels(prepared, norms) if start == 0 else 1
                self.tiles.bounded(prepared, start, start + n, norms, approx, margin, levels)
                if levels == 1 and self.refine and prepared.batch > 1:  # see TiledRows.refine
                    low, high = approx[:, :n] - margin[:, :n], approx[:, :n] + margin[:, :n]
                    cut = upper.kth_with(high, numbers) if upper is not None else None
                    undecided = _undecided(low, high, lower.kth_with(low, numbers), cut, ok)
                    self.tiles.refine(prepared, start, start + n, norms, approx, margin, undecided)
            elif self.resident is None:  # streamed blocks: tiled a step at a time
                done = 0
                if levels == 0:
                    levels, done = stream_levels(self.kernel, prepared, raw, norms, approx, margin)
                rest = (raw[done:], norms[done:], approx[:, done:], margin[:, done:])
                stream_bounded(self.kernel, prepared, *rest, levels)
            else:  # resident rows in stored order (LORIF_ROW_TILES=0)
                self.kernel.bounded(prepared, raw, norms, approx, margin)
            low = approx[:, :n] - margin[:, :n]
            high = approx[:, :n] + margin[:, :n]
            lower.add(low, numbers)
            if upper is not None:
                upper.add(high, numbers)
            cut = upper.kth() if upper is not None else None
            keep = _undecided(low, high, lower.kth(), cut, ok).any(dim=0)
            picked = keep.nonzero().squeeze(1)
            if kept_stored is not None:
                kept_stored.append(raw.index_select(0, picked))
            if release is not None:
                release()
            kept_rows.append(picked + start)
            kept_bounds.append((low[:, picked], high[:, picked]))
            exact_mode = picked.shape[0] > _MAX_KEPT * n
        rows = torch.cat(kept_rows)
        low = torch.cat([b[0] for b in kept_bounds], dim=1)
        high = torch.cat([b[1] for b in kept_bounds], dim=1)
        # Final thresholds: only rows that can still reach them are rescored.
        ok = allowed_at(allowed, rows) if allowed is not None else None
        need = _undecided(low, high, lower.kth(), upper.kth() if upper is not None else None, ok)
        best = make(top_k, True)
        worst = make(bottom_k, False) if bottom_k else None
        rescored = exact_rows
        if bool(need.any()):
            stored = torch.cat(kept_stored) if kept_stored is not None else None
            top, bottom, candidates = self._rescore(
                prepared, rows, need, top_k, bottom_k, allowed, stored
            )
            best.add(*top)
            if worst is not None and bottom is not None:
                worst.add(*bottom)
            rescored += candidates
        for merged, exact in ((best, exact_best), (worst, exact_worst)):
            if merged is not None and exact is not None and exact.scores is not None:
                assert exact.rows is not None
                merged.add(exact.scores, exact.rows)
        return FusedOutcome(
            best.result(), worst.result() if worst is not None else None, wait, count, rescored
        )

    def _rescore(
        self,
        prepared: PreparedQuery,
        rows: torch.Tensor,
        need: torch.Tensor,
        top_k: int,
        bottom_k: int,
        allowed: torch.Tensor | None,
        stored: torch.Tensor | None = None,
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None, int]:
        """Exact scores of the candidates: of their union for every query at once, or, where
        the queries' candidates overlap little, of each query's own (fewer row-queries).
        ``stored``: the candidates' stored rows, aligned with ``rows`` (else fetched)."""
        union = need.any(dim=0)
        rows, need = rows[union], need[:, union]
        if stored is None:
            stored = self._fetch(rows)
        else:
            stored = stored[union]
        per_query = int(need.sum())
        if prepared.batch == 1 or 2 * per_query > rows.shape[0] * prepared.batch:
            parts = [(prepared, rows, stored, allowed)]
        else:
            parts = [
                (
                    prepared.one(b),
                    rows[need[b]],
                    stored[need[b]],
                    None if allowed is None else allowed[b : b + 1],
                )
                for b in range(prepared.batch)
            ]
        tops, bottoms = [], []
        for query, picked, picked_stored, mask in parts:
            exact = torch.empty(query.batch, picked.shape[0], dtype=torch.float32)
            self.kernel.score(query, picked_stored, exact)
            tops.append(_best_of(exact, picked, top_k, True, mask))
            if bottom_k:
                bottoms.append(_best_of(exact, picked, bottom_k, False, mask))
        top = (torch.cat([t[0] for t in tops]), torch.cat([t[1] for t in tops]))
        bottom = (
            (torch.cat([b[0] for b in bottoms]), torch.cat([b[1] for b in bottoms]))
            if bottoms
            else None
        )
        return top, bottom, sum(int(p.shape[0]) for _, p, _, _ in parts)

    def _fetch(self, rows: torch.Tensor) -> torch.Tensor:
        """The resident stored rows with these (ascending) numbers, as one contiguous block
        (streamed scans keep their candidates' rows as they go)."""
        if self.tiles is not None:
            return self.tiles.rows(rows)
        if self.resident is None:
            raise RuntimeError("streamed rows are kept during the scan, not fetched")
        return self.resident.index_select(0, rows)


def every_layer(reader: IndexReader) -> ScanQuery:
    """A (zero) query naming every layer of the index: the kernel's full layer table."""
    layers = reader.layout.layers
    return ScanQuery({s.name: torch.zeros(1, s.d1, s.d2, dtype=torch.float32) for s in layers})

"""Where the bounded scan starts to pay (docs/server.md, "Small indexes").

The bounded scan prepares every query's int8 levels and their error bounds before its pass:
≈ 2 ms at the demo dims, ≈ 55–80 ms at SmolLM2-135M dims on two cores, independent of the
number of rows. Its pass then saves (exact − bounded) time per row, so below
prep / (exact − bounded) rows the exact (``fused``) scan answers sooner. Both give the same
answer bit for bit, so the choice is only about speed; ``auto`` makes it at start-up from
timings of both on the index's own rows.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import torch

from lorif_serve.server.tiled import stream_bounded
from lorif_serve.server.torch_threads import serial_torch

if TYPE_CHECKING:
    from lorif_serve.indexer.core.query import ScanQuery
    from lorif_serve.indexer.store.reader import IndexReader
    from lorif_serve.server.kernels.fused import FusedInt8Scan
    from lorif_serve.server.kernels.prepared import PreparedQuery
    from lorif_serve.server.row_norms import RowNorms
    from lorif_serve.server.tiled import TiledRows


class Scanner(Protocol):
    """What the measurement needs of a ``FusedScanner``."""

    tiles: TiledRows | None
    resident: torch.Tensor | None
    reader: IndexReader
    kernel: FusedInt8Scan
    norms: RowNorms
    exact_below: float

    @property
    def bounds(self) -> bool: ...

    def prepare(self, query: ScanQuery, bounded: bool = True) -> PreparedQuery: ...


# Indexes this large are past any break-even measured (≈ 1–3 k rows), so start-up does not
# time them; rows timed per kernel at start-up (a few hundred ms at SmolLM2-135M dims).
CALIBRATE_BELOW = 1 << 16
_TIMED_ROWS = 1024
_REPEATS = 3


def break_even_rows(prep_extra_s: float, exact_row_s: float, bounded_row_s: float) -> float:
    """Rows from which the bounded scan is the faster one: its extra query preparation over
    what it saves per row (∞ where it saves nothing per row)."""
    saving = exact_row_s - bounded_row_s
    if saving <= 0:
        return math.inf
    return max(prep_extra_s, 0.0) / saving


def median_seconds(job: Callable[[], object], repeats: int = _REPEATS, warmup: int = 0) -> float:
    """The median wall time of ``repeats`` calls of ``job`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        job()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        job()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def measure_break_even(scanner: Scanner, query: ScanQuery) -> float:
    """Time ``query``'s preparation with and without the int8 levels, and the exact and the
    bounded kernels over the first rows (the two-level tiled pass; streamed rows are tiled a
    step at a time); returns ``break_even_rows``. 0 (keep bounded) where resident rows are not
    tiled (a diagnostics setting)."""
    tiles = scanner.tiles
    if tiles is not None:
        rows = min(tiles.tiled, _TIMED_ROWS)
    elif scanner.resident is None:
        rows = min(scanner.reader.n_examples, _TIMED_ROWS)
    else:
        return 0.0
    if rows < 16:
        return 0.0
    prepare_bounded = median_seconds(lambda: scanner.prepare(query, bounded=True))
    prepare_exact = median_seconds(lambda: scanner.prepare(query, bounded=False))
    exact, bounded = scanner.prepare(query, bounded=False), scanner.prepare(query, bounded=True)
    out = torch.empty(1, rows, dtype=torch.float32)
    margin = torch.empty_like(out)
    if tiles is not None:
        norms = scanner.norms.block(bounded, tuple(query.hq), tiles.data[:rows], 0, resident=True)
        stored = tiles.block(0, rows)  # an index scanned exactly is put back in stored order

        def bounded_pass() -> None:
            tiles.bounded(bounded, 0, rows, norms, out, margin, levels=2)
    else:  # streamed rows: their norms are computed at start-up (``warm``), so not timed
        stored = scanner.reader.rows(0, rows)
        norms = scanner.norms.block(bounded, tuple(query.hq), stored, 0, resident=False)

        def bounded_pass() -> None:
            stream_bounded(scanner.kernel, bounded, stored, norms, out, margin, levels=2)

    with serial_torch():
        exact_s = median_seconds(lambda: scanner.kernel.score(exact, stored, out))
        bounded_s = median_seconds(bounded_pass)
    return break_even_rows(prepare_bounded - prepare_exact, exact_s / rows, bounded_s / rows)


def by_size(scanner: Scanner, every: ScanQuery, rows: int, reason: str) -> tuple[str, str]:
    """``auto``: the exact scan where the index (``rows``) is below the bounded
    scan's break-even, measured now (``measure_break_even``); the kernel's name and why."""
    if rows >= CALIBRATE_BELOW:
        return "bounded", reason
    scanner.exact_below = measure_break_even(scanner, every)
    if not scanner.bounds:
        if scanner.tiles is not None:  # the exact scan reads rows in stored order
            scanner.tiles.restore()
            scanner.tiles = None
        where = (
            "the bounded pass saves nothing per row here"
            if math.isinf(scanner.exact_below)
            else f"≈ {scanner.exact_below:,.0f} rows here"
        )
        return "fused", f"{reason}; {rows:,} rows, below the bounded scan's break-even ({where})"
    return "bounded", f"{reason}; bounded from ≈ {scanner.exact_below:,.0f} rows here"

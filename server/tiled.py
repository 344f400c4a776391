"""The resident rows of a bounded CPU scan, kept in row tiles (docs/server.md, "Row tiles").

The bounded pass is fastest when one vector register holds the same number of 16 rows: the
integer products then take their stored operand straight from memory and the query's code
by broadcast, with no per-row reductions. At start-up the resident copy is rearranged in
place, 16 rows at a time (``lorif_tile_rows``), into that order; the rows after the last
whole tile stay as stored. Everything else that reads resident rows (exact rescoring, the
exact fallback, the torch path of the low-rank query modes) gets them back in stored order
through ``rows`` / ``block``. The index file is not changed.
"""

from __future__ import annotations

import torch

from lorif_serve.server.kernels.fused import FusedInt8Scan
from lorif_serve.server.kernels.prepared import PreparedQuery

_UNTILE_ROWS = 4096  # rows put back in stored order at a time for exact scoring
# Undecided rows a tile must hold for one query's second level, in a batch of one: it costs
# 16 rows' pass, ≈ 4-7 µs on two cores, and rescoring a row exactly ≈ 1-1.5 µs a query
# (scan_kernels.md). A row undecided for one query of a batch of B is rescored for all of
# them (their union), so there the break-even is _REFINE_ROWS / B rows. A scan of one query
# skips the refinement: real queries left no tile with four undecided rows (demo index and
# 1 M rows: the same rows rescored), and its masks cost ≈ 10 ms per million rows.
_REFINE_ROWS = 4
_PROBE_ROWS = 1024  # rows scored at one level to choose the number of query levels


class TiledRows:
    """The resident int8 rows, tiled in place up to ``tiled`` (a multiple of 16)."""

    def __init__(self, kernel: FusedInt8Scan, meta: torch.Tensor, rows: torch.Tensor) -> None:
        """``meta``: the kernel's layer table for every layer of the row."""
        self.kernel, self.meta, self.data = kernel, meta, rows
        self.tiled = kernel.tile_rows(meta, rows)
        # the last level probe's one-level scores: (query, approx, margin) of rows 0, 1, …
        self._probe: tuple[PreparedQuery, torch.Tensor, torch.Tensor] | None = None

    @property
    def n(self) -> int:
        return int(self.data.shape[0])

    def rows(self, which: torch.Tensor) -> torch.Tensor:
        """Rows ``which`` in stored order, as one contiguous (len, width) block."""
        return self.kernel.untile(self.meta, self.data, self.tiled, which)

    def block(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) in stored order (a copy)."""
        return self.rows(torch.arange(start, stop))

    def restore(self) -> None:
        """Put the rows back in stored order, in place (a tile holds the bytes of its own 16
        rows, so whole tiles can be restored a few at a time). The tiles are gone after."""
        for a in range(0, self.tiled, _UNTILE_ROWS):
            b = min(a + _UNTILE_ROWS, self.tiled)
            self.data[a:b].copy_(self.block(a, b))
        self.tiled = 0

    def bounded(
        self,
        query: PreparedQuery,
        start: int,
        stop: int,
        norms: torch.Tensor,
        approx: torch.Tensor,
        margin: torch.Tensor,
        levels: int = 1,
    ) -> None:
        """The bounded pass over rows [start, stop): tiles by the tiled kernel (with
        ``levels`` query levels), the tail by the row kernel (one level; its bound holds all
        the same). ``start`` is a multiple of 16 or at least ``tiled``."""
        cut = min(max(start, self.tiled), stop)
        if cut > start:
            if start % 16:
                raise ValueError("a tiled block starts on a tile")
            done = self._probed(query, start, cut, levels, approx, margin)
            rows = self.data[start + done : cut]
            if rows.shape[0]:
                self.kernel.bounded(
                    query,
                    rows,
                    norms[done : cut - start],
                    approx[:, done:],
                    margin[:, done:],
                    tiled=True,
                    levels=levels,
                )
        if stop > cut:
            offset = cut - start
            self.kernel.bounded(
                query,
                self.data[cut:stop],
                norms[offset:].contiguous(),
                approx[:, offset:],
                margin[:, offset:],
            )

    def _probed(
        self,
        query: PreparedQuery,
        start: int,
        cut: int,
        levels: int,
        approx: torch.Tensor,
        margin: torch.Tensor,
    ) -> int:
        """Rows of [start, cut) the level probe already scored at one level for this query
        (copied into approx and margin): the pass starts after them."""
        probe, self._probe = self._probe, None
        if probe is None or probe[0] is not query or levels != 1 or start != 0:
            return 0
        done = min(probe[1].shape[1], cut)
        approx[:, :done] = probe[1][:, :done]
        margin[:, :done] = probe[2][:, :done]
        return done

    def refine(
        self,
        query: PreparedQuery,
        start: int,
        stop: int,
        norms: torch.Tensor,
        approx: torch.Tensor,
        margin: torch.Tensor,
        undecided: torch.Tensor,
    ) -> int:
        """After a one-level pass over [start, stop): the second level on each query's
        tiles that hold at least ⌈``_REFINE_ROWS`` / B⌉ of the rows ``undecided`` (B, n)
        marks (those whose interval still reaches the query's cuts). Every other row keeps
        its one-level interval, which already excludes it. Returns the tiles refined, summed
        over the queries."""
        cut = (min(max(start, self.tiled), stop) - start) // 16 * 16  # the block's tiles
        if cut <= 0:
            return 0
        # a tile's second level costs about what rescoring _REFINE_ROWS rows exactly does
        needed = -(-_REFINE_ROWS // query.batch)
        want = undecided[:, :cut].reshape(query.batch, -1, 16).sum(dim=2) >= needed
        rows = self.data[start : start + cut]
        return self.kernel.refine(query, rows, want, norms[:cut], approx, margin)

    def levels(self, query: PreparedQuery, norms: torch.Tensor) -> int:
        """1 or 2 query levels, from a probe of the first tiles at one level (``norms``: of
        rows 0, 1, …; at least those probed): two where
        some query's bound is wider than its scores' spread (mean margin > std of the
        approximate scores), so that one level would leave a large share of the rows as
        candidates (measured: 0.55 std keeps 0.5 % of the demo index, 1.85 std 82 % at
        SmolLM2-135M dims). Either choice returns the same answer; only the cost differs."""
        probe = min(self.tiled, _PROBE_ROWS, norms.shape[0]) // 16 * 16
        if probe == 0:
            return 1
        approx = torch.empty(query.batch, probe, dtype=torch.float32)
        margin = torch.empty_like(approx)
        self.kernel.bounded(query, self.data[:probe], norms[:probe], approx, margin, tiled=True)
        self._probe = (query, approx, margin)  # the pass takes these rows as they are
        return levels_of(approx, margin)

    def score(self, query: PreparedQuery, start: int, stop: int, out: torch.Tensor) -> None:
        """Exact scores of rows [start, stop) into ``out`` (B, ≥ stop − start)."""
        for a in range(start, stop, _UNTILE_ROWS):
            b = min(a + _UNTILE_ROWS, stop)
            self.kernel.score(query, self.block(a, b), out[:, a - start : b - start])


def levels_of(approx: torch.Tensor, margin: torch.Tensor) -> int:
    """The level rule (``TiledRows.levels``) on one-level intervals of the probed rows."""
    spread = approx.std(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
    return 2 if bool((margin.mean(dim=1) > spread).any()) else 1


def stream_levels(
    kernel: FusedInt8Scan,
    query: PreparedQuery,
    rows: torch.Tensor,
    norms: torch.Tensor,
    approx: torch.Tensor,
    margin: torch.Tensor,
) -> tuple[int, int]:
    """The level rule for rows in stored order (a streamed block's first whole tiles),
    probed into ``approx`` and ``margin``: (levels, rows already scored at that level — the
    probe's where it chose one, else none)."""
    probe = min(rows.shape[0], _PROBE_ROWS) // 16 * 16
    if probe == 0:
        return 1, 0
    kernel.bounded(query, rows[:probe], norms[:probe], approx, margin, stream=True)
    levels = levels_of(approx[:, :probe], margin[:, :probe])
    return levels, probe if levels == 1 else 0


def stream_bounded(
    kernel: FusedInt8Scan,
    query: PreparedQuery,
    rows: torch.Tensor,
    norms: torch.Tensor,
    approx: torch.Tensor,
    margin: torch.Tensor,
    levels: int,
) -> None:
    """The bounded pass over rows in stored order: their whole tiles through the tiled pass
    (tiled a step at a time into a small buffer), the rows after them by the row pass."""
    n = rows.shape[0]
    whole = n // 16 * 16
    if whole:
        kernel.bounded(
            query, rows[:whole], norms[:whole], approx, margin, levels=levels, stream=True
        )
    if whole < n:
        kernel.bounded(query, rows[whole:], norms[whole:], approx[:, whole:], margin[:, whole:])

"""The fused int8 scan kernels' ctypes wrapper: every entry point run on all cores.

The torch path scores an int8 block by converting it to float32 (4× its bytes written and
read back), slicing each layer's factors out of the packed rows (copies) and running small
GEMMs whose (n·c, B·d) intermediates go through memory. ``scan_int8.c`` does the same
arithmetic (float32 products and sums) row by row in registers, reading each stored byte
once; its bounded pass scores int8 codes against the query's int8 levels with an error
bound per row. ``build.load_kernel`` compiles and loads it.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

from lorif_serve.indexer.core.codec import RowCodec
from lorif_serve.indexer.core.factors import RowLayout
from lorif_serve.server.kernels.prepared import TILE_ROWS, PreparedQuery, prepare_query
from lorif_serve.server.kernels.quantize import BoundedQuery

_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_I32 = ctypes.c_int32


class FusedInt8Scan:
    """Scores raw int8 rows (n, width) for a prepared query batch into (B, n) float32."""

    def __init__(self, library: ctypes.CDLL) -> None:
        self._fn = library.lorif_scan_int8
        self._fn.argtypes = [_P, _I64, _I64, _P, _I32, _P, _I32, _I64, _P, _I64, _P]
        self._fn.restype = None
        self.has_bounded = bool(library.lorif_has_bounded())
        # 512: the AVX-512 bounded pass; 256: the AVX2 one (its row pass scores exactly);
        # 0: none
        self.vector_bits = int(library.lorif_vector_bits())
        if self.has_bounded:
            self._bounded = library.lorif_bounded_int8
            self._bounded.argtypes = [_P, _I64, _I64, _P, _P, _I32, _P, _I64, _P, _I64]
            self._bounded.argtypes += [_P, _P, _I64, _P, _P, _I32, _P, _P, _P, _I64, _P, _I64]
            self._bounded.restype = None
            self._tiles = library.lorif_bounded_tiles
            self._tiles.argtypes = [*self._bounded.argtypes, _P, _P, _I32, _P, _P, _P, _I64, _P]
            self._tiles.restype = None
            self._tile_rows = library.lorif_tile_rows
            self._tile_rows.argtypes = [_P, _I64, _I64, _P, _I32, _P]
            self._tile_rows.restype = _I32
            self._untile = library.lorif_untile_rows
            self._untile.argtypes = [_P, _I64, _I64, _P, _I32, _P, _I64, _P, _P]
            self._untile.restype = None
            self._refine = library.lorif_refine_tiles
            self._refine.argtypes = [_P, _I64, _P, _I64, _P, _I32, _P, _P, _I32, _P, _I64, _P]
            self._refine.argtypes += [_P, _I64, _P, _P, _P, _P, _P, _I64, _P, _P, _I64]
            self._refine.restype = None
            self._norms = library.lorif_row_norms
            self._norms.argtypes = [_P, _I64, _I64, _P, _I32, _P]
            self._norms.restype = None
        # AMX products in the tiled bounded pass where the build and the OS allow them;
        # LORIF_AMX=0 keeps the vector pass (side-by-side benchmarks).
        self.use_amx = (
            self.has_bounded
            and os.environ.get("LORIF_AMX", "1") != "0"
            and bool(library.lorif_amx_init())
        )
        self.threads = max(1, torch.get_num_threads())
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="fused-scan")

    def prepare(
        self,
        layout: RowLayout,
        codec: RowCodec,
        hq: dict[str, torch.Tensor],
        bounded: bool = True,
    ) -> PreparedQuery:
        """Per scored layer: the kernel's column map, and Hq in the orientation it reads;
        ``bounded`` (where the build has the pass): with its int8 levels. The orientation
        is the same either way, so exact scores do not depend on ``bounded``."""
        return prepare_query(
            layout, codec, hq, bounded=bounded and self.has_bounded, amx=self.use_amx
        )

    def row_norms(self, query: PreparedQuery, rows: torch.Tensor) -> torch.Tensor:
        """(n, layers) s_a·s_b·Σ_k ‖a_k‖‖b_k‖ of the query's layers: they do not depend on
        the query's values, only on which layers it scores (compute once, reuse)."""
        n, layers = rows.shape[0], query.meta.shape[0]
        norms = torch.empty(n, layers, dtype=torch.float32)
        _check_rows(rows)

        def run(start: int, stop: int, _work: torch.Tensor) -> None:
            self._norms(
                rows.data_ptr() + start * rows.stride(0),
                stop - start,
                rows.stride(0),
                query.meta.data_ptr(),
                layers,
                norms.data_ptr() + 4 * start * layers,
            )

        self._across_threads(query, n, run)
        return norms

    def tile_rows(self, meta: torch.Tensor, rows: torch.Tensor) -> int:
        """Rearrange the whole 16-row tiles of ``rows`` in place (``scan_int8.c``: vector
        lanes become rows); returns how many rows are tiled (the rest stay as they were).
        ``meta``: every layer of the row (a ``prepare`` of all layers)."""
        _check_rows(rows)
        if not rows.is_contiguous():
            raise ValueError("rows must be contiguous to be tiled")
        tiles = rows.shape[0] // TILE_ROWS
        per_thread = -(-tiles // self.threads)
        width = rows.shape[1]

        def run(first: int) -> None:
            count = min(per_thread, tiles - first)
            tmp = torch.empty(TILE_ROWS * width, dtype=torch.int8)
            done = self._tile_rows(
                rows.data_ptr() + first * TILE_ROWS * width,
                count,
                width,
                meta.data_ptr(),
                meta.shape[0],
                tmp.data_ptr(),
            )
            if not done:
                raise MemoryError("no memory for the tile transform's plan")

        list(self._pool.map(run, range(0, tiles, max(per_thread, 1))))
        return tiles * TILE_ROWS

    def untile(
        self, meta: torch.Tensor, rows: torch.Tensor, tiled: int, which: torch.Tensor
    ) -> torch.Tensor:
        """Rows ``which`` of a (partly) tiled ``rows`` in their stored order."""
        which = which.to(torch.int64).contiguous()
        out = torch.empty((which.shape[0], rows.shape[1]), dtype=torch.int8)
        scratch = torch.empty(rows.shape[1], dtype=torch.uint8)
        self._untile(
            rows.data_ptr(),
            tiled,
            rows.shape[1],
            meta.data_ptr(),
            meta.shape[0],
            which.data_ptr(),
            which.shape[0],
            out.data_ptr(),
            scratch.data_ptr(),
        )
        return out

    def bounded(
        self,
        query: PreparedQuery,
        rows: torch.Tensor,
        norms: torch.Tensor,
        approx: torch.Tensor,
        margin: torch.Tensor,
        tiled: bool = False,
        levels: int = 1,
        stream: bool = False,
    ) -> None:
        """(B, n) approximate scores and their error bounds: |exact − approx| ≤ margin.

        ``norms``: ``row_norms`` of the same rows and layers. ``tiled``: the rows are whole
        tiles (``tile_rows``). ``stream``: rows in stored order (whole tiles of them) taken
        through the tiled pass, each step's tiles made in a small buffer first; the same
        intervals bit for bit. ``levels``: 2 adds the query's second int8 level (tiles only).
        """
        bounded = _check_bounded(query, rows, norms, approx, margin)
        tiled = tiled or stream
        if tiled and rows.shape[0] % TILE_ROWS:
            raise ValueError(f"tiled rows come in whole tiles of {TILE_ROWS}")
        if levels not in (1, 2) or (levels == 2 and not tiled):
            raise ValueError("two query levels are for tiled rows only")
        fn = self._tiles if tiled else self._bounded
        # a step's tiles: up to 16 with AMX, 4 without (scan_int8.c's WIDE and QUAD)
        step_bytes = (16 if self.use_amx else 4) * TILE_ROWS * rows.shape[1]
        eps = bounded.fine_eps if levels == 2 else bounded.eps
        extra = (
            (
                bounded.fine.data_ptr(),
                bounded.fine_negated.data_ptr(),
                levels,
                *_amx_arguments(bounded),
            )
            if tiled
            else ()
        )
        corr, corr_offsets = (
            (bounded.negated, bounded.neg_offsets)
            if tiled
            else (bounded.corrections, bounded.corr_offsets)
        )

        def run(start: int, stop: int, work: torch.Tensor) -> None:
            scratch = torch.empty(step_bytes, dtype=torch.int8) if stream else None
            fn(
                rows.data_ptr() + start * rows.stride(0),
                stop - start,
                rows.stride(0),
                query.meta.data_ptr(),
                bounded.offsets.data_ptr(),
                query.meta.shape[0],
                query.hq.data_ptr(),
                query.hq.stride(0),
                bounded.packed.data_ptr(),
                bounded.packed.stride(0),
                corr.data_ptr(),
                corr_offsets.data_ptr(),
                corr.stride(0),
                bounded.scales.data_ptr(),
                eps.data_ptr(),
                query.batch,
                norms.data_ptr() + 4 * start * norms.shape[1],
                approx.data_ptr() + 4 * start,
                margin.data_ptr() + 4 * start,
                approx.stride(0),
                work.data_ptr(),
                work.shape[0],
                *extra,
                *((None if scratch is None else scratch.data_ptr(),) if tiled else ()),
            )

        self._across_threads(query, rows.shape[0], run)

    def refine(
        self,
        query: PreparedQuery,
        rows: torch.Tensor,
        want: torch.Tensor,
        norms: torch.Tensor,
        approx: torch.Tensor,
        margin: torch.Tensor,
    ) -> int:
        """The second query level over tiles of a one-level pass: where ``want`` (B, tiles)
        is set, that tile's rows gain the H8' products in ``approx`` and ``margin`` becomes
        the two-level bound (``bounded(..., tiled=True, levels=2)`` gives the same intervals
        up to rounding, which the bound covers). ``rows``: whole tiles. Returns the (tile,
        query) pairs refined."""
        bounded = _check_bounded(query, rows, norms, approx, margin)
        if want.shape != (query.batch, rows.shape[0] // TILE_ROWS):
            raise ValueError("want must be (B, tiles) of these rows")
        tiles = want.any(dim=0).nonzero().squeeze(1).contiguous()
        flags = want[:, tiles].t().contiguous().to(torch.uint8)  # (listed tiles, B)
        count = int(tiles.shape[0])

        def run(first: int, stop: int) -> None:
            self._refine(
                rows.data_ptr(),
                rows.stride(0),
                tiles.data_ptr() + 8 * first,
                stop - first,
                flags.data_ptr() + first * query.batch,
                query.batch,
                query.meta.data_ptr(),
                bounded.offsets.data_ptr(),
                query.meta.shape[0],
                bounded.fine.data_ptr(),
                bounded.fine.stride(0),
                bounded.fine_negated.data_ptr(),
                bounded.neg_offsets.data_ptr(),
                bounded.fine_negated.stride(0),
                bounded.scales.data_ptr(),
                bounded.fine_eps.data_ptr(),
                norms.data_ptr(),
                approx.data_ptr(),
                margin.data_ptr(),
                approx.stride(0),
                *_amx_arguments(bounded)[1:],
            )

        if count < 4 * self.threads:  # a few tiles: not worth waking the pool
            run(0, count)
        else:
            share = -(-count // self.threads)
            jobs = range(0, count, share)
            list(self._pool.map(lambda a: run(a, min(a + share, count)), jobs))
        return int(flags.sum())

    def score(self, query: PreparedQuery, rows: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Write the (B, n) scores of ``rows`` into ``out`` (a (B, ≥ n) float32 buffer)."""
        _check_rows(rows)
        _check_out(query, rows, out)

        def run(start: int, stop: int, work: torch.Tensor) -> None:
            self._fn(
                rows.data_ptr() + start * rows.stride(0),
                stop - start,
                rows.stride(0),
                query.meta.data_ptr(),
                query.meta.shape[0],
                query.hq.data_ptr(),
                query.batch,
                query.hq.stride(0),
                out.data_ptr() + 4 * start,
                out.stride(0),
                work.data_ptr(),
            )

        self._across_threads(query, rows.shape[0], run)
        return out[:, : rows.shape[0]]

    def _across_threads(
        self, query: PreparedQuery, n: int, job: Callable[[int, int, torch.Tensor], None]
    ) -> None:
        """Run ``job(start, stop, scratch)`` on one contiguous share of the n rows per thread
        (whole tiles), each with its own scratch space."""
        chunk = -(-max(n, 1) // self.threads)
        chunk = -(-chunk // TILE_ROWS) * TILE_ROWS
        spans = [(a, min(a + chunk, n)) for a in range(0, n, chunk)]
        scratch = [torch.empty(query.work_floats, dtype=torch.float32) for _ in spans]
        jobs = [(a, b, w) for (a, b), w in zip(spans, scratch, strict=True)]
        list(self._pool.map(lambda args: job(*args), jobs))


def _amx_arguments(bounded: BoundedQuery) -> tuple[int | None, int | None, int, int]:
    """The AMX arguments (rm, fine_rm, rm_offsets, rm_stride): NULLs where the query has no
    row-major codes (then the kernel takes the vector pass)."""
    if bounded.rowmajor.shape[1] == 0:
        return None, None, bounded.rm_offsets.data_ptr(), 0
    rm, fine = bounded.rowmajor, bounded.fine_rowmajor
    return rm.data_ptr(), fine.data_ptr(), bounded.rm_offsets.data_ptr(), rm.stride(0)


def _check_rows(rows: torch.Tensor) -> None:
    if rows.dtype != torch.int8 or rows.stride(1) != 1:
        raise ValueError("the fused kernel reads int8 rows with contiguous columns")


def _check_bounded(
    query: PreparedQuery,
    rows: torch.Tensor,
    norms: torch.Tensor,
    approx: torch.Tensor,
    margin: torch.Tensor,
) -> BoundedQuery:
    """The query's int8 form, once the rows, their norms and both outputs fit it."""
    bounded = query.bounded
    if bounded is None:
        raise ValueError("this build has no bounded pass (needs AVX-512 VNNI or AVX2)")
    if norms.shape != (rows.shape[0], query.meta.shape[0]) or not norms.is_contiguous():
        raise ValueError("norms must be the (n, layers) row_norms of these rows")
    _check_rows(rows)
    _check_out(query, rows, approx)
    _check_out(query, rows, margin)
    return bounded


def _check_out(query: PreparedQuery, rows: torch.Tensor, out: torch.Tensor) -> None:
    if out.dtype != torch.float32 or out.stride(1) != 1 or out.shape[0] != query.batch:
        raise ValueError("out must be a (B, n) float32 buffer")
    if out.shape[1] < rows.shape[0]:
        raise ValueError("out has fewer columns than there are rows")

"""A query batch laid out for the compiled scan kernels.

Each scored layer gets a row of the kernel's column map (where its two factor sides and
their scales sit in a stored row, its rank and widths) and its preconditioned query block in
the orientation the kernel reads; the bounded pass also gets the query's int8 levels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lorif_serve.indexer.core.codec import RowCodec
from lorif_serve.indexer.core.factors import LayerSpec, RowLayout
from lorif_serve.server.kernels.quantize import BoundedQuery, quantize_queries

TILE_ROWS = 16  # rows per tile in the kernels; thread chunks are cut at multiples of it
_GROUP_SLOTS = 8 * 8 + 1  # the bounded pass's per-query accumulators (16 floats each)


@dataclass
class PreparedQuery:
    """A batch of preconditioned queries laid out for the kernel."""

    meta: torch.Tensor  # (layers, 8) int64
    hq: torch.Tensor  # (B, Σ d1·d2) float32, each layer's block (db, da) row-major
    work_floats: int
    batch: int
    bounded: BoundedQuery | None = None

    def one(self, index: int) -> PreparedQuery:
        """Query ``index`` alone (for the exact kernel)."""
        return PreparedQuery(self.meta, self.hq[index : index + 1], self.work_floats, 1)


def prepare_query(
    layout: RowLayout,
    codec: RowCodec,
    hq: dict[str, torch.Tensor],
    bounded: bool,
    amx: bool = False,
) -> PreparedQuery:
    """Per scored layer: the kernel's column map, and Hq in the orientation it reads;
    ``bounded`` adds the int8 form the bounded pass reads, ``amx`` its AMX layout (and the
    orientation that suits it, ``_vector_side``)."""
    metas: list[list[int]] = []
    parts: list[torch.Tensor] = []
    offset, work = 0, 1
    scales = codec.scale_byte_offsets()
    for index, spec in enumerate(layout.layers):
        if spec.name not in hq:
            continue
        h = hq[spec.name].detach().to("cpu", torch.float32)
        meta, part = _layer_meta(spec, layout.offsets[spec.name], scales[index], h, amx)
        metas.append([*meta, offset])
        parts.append(part)
        offset += spec.dim
        # floats for a row's codes as float, or a tile's flipped b codes (bytes)
        work = max(
            work, meta[2] * (meta[3] + meta[4]) + 16, TILE_ROWS * meta[2] * meta[4] // 4 + 16
        )
    if not metas:
        raise ValueError("the query names no layer of this index")
    flat = torch.cat(parts, dim=1).contiguous()
    # the bounded pass's accumulators sit at the end, 64-byte aligned
    work = -(-work // 16) * 16 + flat.shape[0] * _GROUP_SLOTS * 16
    table = torch.tensor(metas, dtype=torch.int64)
    prepared = PreparedQuery(table, flat, work, flat.shape[0])
    if bounded:
        prepared.bounded = quantize_queries(table, parts, len(metas), row_major=amx)
    return prepared


def _layer_meta(
    spec: LayerSpec, start: int, scales: tuple[int, int | None], h: torch.Tensor, amx: bool
) -> tuple[list[int], torch.Tensor]:
    """The kernel's view of one layer (a, b offsets, c, da, db, a and b scale bytes) and its
    (B, db·da) query block. ``a`` is the vectorized side (``_vector_side``)."""
    left_scale, right_scale = scales
    if spec.dense:  # one component: a = G, b = the number 1
        return [start, -1, 1, spec.dim, 1, left_scale, -1], h.reshape(h.shape[0], -1)
    right_start = start + spec.rank * spec.d1
    assert right_scale is not None
    if _vector_side(spec.d1, spec.d2, amx) == "left":  # a = L, H read as (d2, d1)
        meta = [start, right_start, spec.rank, spec.d1, spec.d2, left_scale, right_scale]
        return meta, h.transpose(1, 2).reshape(h.shape[0], -1)
    meta = [right_start, start, spec.rank, spec.d2, spec.d1, right_scale, left_scale]
    return meta, h.reshape(h.shape[0], -1)  # a = R, H read as (d1, d2)


def _vector_side(d1: int, d2: int, amx: bool = False) -> str:
    """The side held in vector lanes: the narrower of the sides that fill whole 16-float
    registers (else 8), so the inner loops have no remainder and the per-lane work (one
    conversion and product per register of a) is smallest; else the wider side.

    With AMX the other side, b, is the tiles' inner dimension (64 codes per product, any
    multiple of 4), and the per-row work after the tile products grows with a: so a is the
    narrower side wherever b is a multiple of 4 (at SmolLM2-135M dims a 72 × 192 layer then
    takes 15 tile products and 72 per-row steps per component instead of 24 and 192)."""
    if amx and (d1 % 4 == 0 or d2 % 4 == 0):
        if d1 % 4 == 0 and d2 % 4 == 0:
            return "left" if d1 <= d2 else "right"
        return "left" if d2 % 4 == 0 else "right"
    for width in (16, 8):
        fits = [side for side, d in (("left", d1), ("right", d2)) if d % width == 0]
        if len(fits) == 2:
            return "left" if d1 <= d2 else "right"
        if fits:
            return fits[0]
    return "left" if d1 >= d2 else "right"

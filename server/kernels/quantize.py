"""The int8 queries of the bounded pass and the error term of each (docs/server.md)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class BoundedQuery:
    """The int8 form of the queries for the bounded pass, with each layer's error term.

    One level: H ≈ s_H·H8. Two levels (tiles only): H ≈ s_H·(H8 + H8'/128), the second
    code H8' quantizing what the first leaves, ≈ 1/128 of its error for twice the work.
    """

    offsets: torch.Tensor  # (layers,) int64 byte offset of a layer's packed H8, -1: float
    packed: torch.Tensor  # (B, bytes) int8, H8 laid (db/4, da rounded up to 16, 4) per layer
    corr_offsets: torch.Tensor  # (layers,) int64 offset of a layer's corrections
    corrections: torch.Tensor  # (B, Σ lanes) int32, 128·Σ_j H8_ij (the row pass's unsigned b)
    scales: torch.Tensor  # (B, layers) float32 s_H
    eps: torch.Tensor  # (B, layers) float32 bound on |score error| per unit of row norm
    # The tiled pass's corrections: (B, Σ da) int32 −128·Σ_j H8_ij (−1: scored in float).
    neg_offsets: torch.Tensor
    negated: torch.Tensor
    fine: torch.Tensor  # (B, bytes) int8 H8', laid out as ``packed``
    fine_negated: torch.Tensor  # (B, Σ da) int32 −128·Σ_j H8'_ij, at ``neg_offsets``
    fine_eps: torch.Tensor  # (B, layers) float32, the two-level bound's eps
    # Both levels again in row-major order for the AMX products (scan_amx.h): per layer
    # (da rounded up to 16, db rounded up to 64), zeros past da and db; empty without AMX.
    rm_offsets: torch.Tensor  # (layers,) int64 (−1: scored in float)
    rowmajor: torch.Tensor  # (B, bytes) int8
    fine_rowmajor: torch.Tensor  # (B, bytes) int8


_UNIT = 2.0**-24  # float32 unit roundoff
# Float64 query values quantized in one group: the group's temporaries (a dozen of its size)
# then stay in L2/L3. One group of all same-shape layers took 3.5 s to prepare 16 queries at
# SmolLM2-135M dims (3.5 M values per shape, fresh pages for every temporary), these 0.7 s.
_GROUP_BYTES = 1 << 20
_FINE = 128.0  # the second level's codes count 1/128 of the first's


def _round_up(eps: torch.Tensor) -> torch.Tensor:
    """+0.1 % for the float32 rounding of the bound itself, then the next float32 up."""
    up = (eps * 1.001).to(torch.float32)
    return torch.nextafter(up, torch.full((1,), float("inf"), dtype=torch.float32)).contiguous()


def _spectral_norms(matrices: list[torch.Tensor]) -> list[torch.Tensor]:
    """Upper bounds on ‖M‖₂ (B,) of each (B, m, n) float64 matrix, within a factor
    min(m, n)^(1/128) of it (≤ 1.04 for sides up to 128).

    With G = MMᵀ on the smaller side (eigenvalues λᵢ ≥ 0), tr(G^64) = Σ λᵢ^64 ≥ λ_max^64,
    so ‖M‖₂ = √λ_max ≤ tr(G^64)^(1/128), and the bound is loose only by the number of
    eigenvalues close to the largest. Five batched squarings (each rescaled by its trace, so
    nothing overflows) and the trace of a sixth's product replace a symmetric eigensolver,
    whose per-matrix cost (≈ 8 µs for 16 × 16) dominated a batch's preparation. Rounding,
    ≈ 1e-14 relative, is far inside the bound's final +0.1 %.
    """
    out: list[torch.Tensor | None] = [None] * len(matrices)
    shapes: dict[tuple[int, ...], list[int]] = {}
    for index, matrix in enumerate(matrices):
        shapes.setdefault(tuple(matrix.shape), []).append(index)
    for shape, members in shapes.items():
        stacked = torch.cat([matrices[i] for i in members])  # (members · B, m, n)
        wide = shape[1] <= shape[2]
        gram = stacked @ stacked.transpose(1, 2) if wide else stacked.transpose(1, 2) @ stacked
        norms = _trace_power_bound(gram, _SQUARINGS).clamp_min(0).sqrt()
        for member, norm in zip(members, norms.split(shape[0]), strict=True):
            out[member] = norm
    return [norm for norm in out if norm is not None]


_SQUARINGS = 6  # tr(G^(2^6)): within side^(1/64) of λ_max


def _trace_power_bound(gram: torch.Tensor, squarings: int) -> torch.Tensor:
    """tr(G^(2^s))^(1/2^s) ≥ λ_max for a batch of symmetric PSD matrices (…, n, n)."""
    # Invariant: G^power = exp(power · log_scale) · gram.
    log_scale = torch.zeros(gram.shape[0], dtype=gram.dtype)
    power = 1
    for _ in range(squarings - 1):
        trace = gram.diagonal(dim1=1, dim2=2).sum(dim=1).clamp_min(torch.finfo(gram.dtype).tiny)
        gram = gram / trace[:, None, None]
        log_scale = log_scale + torch.log(trace) / power
        gram = gram @ gram
        power *= 2
    # The last squaring only for its trace: tr(A·A) = Σᵢⱼ AᵢⱼAⱼᵢ, n² products instead of n³.
    trace = (gram * gram.transpose(1, 2)).sum(dim=(1, 2)).clamp_min(0)
    return torch.exp(log_scale) * trace ** (1.0 / (2 * power))


def _packed(codes: torch.Tensor, da: int, db: int) -> torch.Tensor:
    """(B, da, db) codes laid (db/4, lanes, 4), lanes = da rounded up to 16 (zeros past da)."""
    batch = codes.shape[0]
    lanes = -(-da // 16) * 16
    signed = torch.zeros(batch, lanes, db, dtype=torch.int8)
    signed[:, :da] = codes.to(torch.int8)
    return signed.reshape(batch, lanes, db // 4, 4).permute(0, 2, 1, 3).reshape(batch, -1)


def _row_major(codes: torch.Tensor, da: int, db: int) -> torch.Tensor:
    """(B, da, db) codes as (B, lanes · kpad): lanes = da rounded up to 16, kpad = db rounded
    up to 64, zeros in the padding (it meets whatever the kernel's scratch tiles hold)."""
    batch = codes.shape[0]
    out = torch.zeros(batch, -(-da // 16) * 16, -(-db // 64) * 64, dtype=torch.int8)
    out[:, :da, :db] = codes.to(torch.int8)
    return out.reshape(batch, -1)


@dataclass
class _LayerCodes:
    """One integer layer's share of a ``BoundedQuery`` (every tensor (B, …))."""

    packed: torch.Tensor
    fine: torch.Tensor
    corrections: torch.Tensor
    negated: torch.Tensor
    fine_negated: torch.Tensor
    scale: torch.Tensor
    eps: torch.Tensor
    fine_eps: torch.Tensor
    rowmajor: torch.Tensor
    fine_rowmajor: torch.Tensor


def _integer(meta: torch.Tensor, index: int) -> bool:
    """Whether the integer passes take layer ``index`` (else it is scored in float)."""
    _, b_offset, c, _, db = (int(v) for v in meta[index, :5])
    return db % 4 == 0 and db <= 1024 and c <= 256 and b_offset >= 0


def _rounding(h: torch.Tensor, c: int, layers: int) -> torch.Tensor:
    """The float32 rounding term of the bound for (…, da, db) queries of rank-c rows."""
    da, db = h.shape[-2:]
    depth = c * (da + db) + (c + 1) * layers + 16
    return 2.0 * _UNIT * depth * torch.linalg.matrix_norm(h)


def _quantize_group(h: torch.Tensor, c: int, layers: int, row_major: bool) -> list[_LayerCodes]:
    """Both levels of G layers of one shape at once: ``h`` (G, B, da, db) float64;
    ``row_major`` adds their codes in the AMX layout."""
    groups, batch, da, db = h.shape
    rounding = _rounding(h, c, layers)  # (G, B)
    scale = (h.abs().amax(dim=(2, 3)) / 127).clamp_min(torch.finfo(torch.float32).tiny)
    scale = scale.to(torch.float32).to(torch.float64)  # the value the kernel multiplies by
    s = scale[:, :, None, None]
    codes = torch.round(h / s).clamp_(-127, 127)
    rest = torch.round((h - codes * s) / (s / _FINE)).clamp_(-127, 127)
    one, two = _spectral_norms(
        [(h - codes * s).flatten(0, 1), (h - (codes + rest / _FINE) * s).flatten(0, 1)]
    )
    lanes = -(-da // 16) * 16
    sums, fine_sums = codes.sum(dim=3), rest.sum(dim=3)  # (G, B, da)
    corrections = torch.zeros(groups, batch, lanes, dtype=torch.int32)
    corrections[:, :, :da] = (128 * sums).to(torch.int32)
    packed = _packed(codes.flatten(0, 1), da, db).view(groups, batch, -1)
    fine = _packed(rest.flatten(0, 1), da, db).view(groups, batch, -1)
    negated, fine_negated = (-128 * sums).to(torch.int32), (-128 * fine_sums).to(torch.int32)
    one, two = one.view(groups, batch), two.view(groups, batch)
    if row_major:
        rm = _row_major(codes.flatten(0, 1), da, db).view(groups, batch, -1)
        fine_rm = _row_major(rest.flatten(0, 1), da, db).view(groups, batch, -1)
    else:
        rm = fine_rm = torch.zeros(groups, batch, 0, dtype=torch.int8)
    return [
        _LayerCodes(
            packed[g],
            fine[g],
            corrections[g],
            negated[g],
            fine_negated[g],
            scale[g],
            rounding[g] + one[g],
            2 * rounding[g] + two[g],
            rm[g],
            fine_rm[g],
        )
        for g in range(groups)
    ]


def quantize_queries(
    meta: torch.Tensor, parts: list[torch.Tensor], layers: int, row_major: bool = False
) -> BoundedQuery:
    """Per layer and query: H8 = round(H / s_H), s_H = max|H| / 127, H8' = round((H −
    s_H·H8) / (s_H/128)), and the error terms of both levels.

    eps = ‖H − Ĥ‖₂ (spectral norm, float64, Ĥ the quantized query; an upper bound on it,
    ``_spectral_norms``) + a float32 rounding
    term that covers both this pass and the exact kernel: 2⁻²³ · depth · ‖H‖_F with depth =
    c·(da + db) + (c + 1)·layers + 16 (twice the products for two levels), the standard bound
    on a sum of that depth (a product's lanes, then c·layers partial sums), with
    ‖H‖_F ≥ ‖|H|‖₂. For any row, |⟨H − Ĥ, Σ_k a_k b_kᵀ⟩| ≤ ‖H − Ĥ‖₂ · Σ_k ‖a_k‖‖b_k‖
    (Cauchy–Schwarz on each component), so eps times the row's Σ_k ‖a_k‖‖b_k‖ bounds the
    difference between the two computed scores.

    Layers of one shape are quantized together, up to ``_GROUP_BYTES`` of float64 values at
    a time (a small batch's preparation is mostly per-call overhead: 14 layers took ≈ 25
    small torch calls each; a large one's, memory traffic).
    """
    batch = parts[0].shape[0]
    codes: list[_LayerCodes | None] = [None] * layers
    shapes: dict[tuple[int, int, int], list[int]] = {}
    for index in range(layers):
        if _integer(meta, index):
            c, da, db = (int(v) for v in meta[index, 2:5])
            shapes.setdefault((c, da, db), []).append(index)
    for (c, da, db), members in shapes.items():
        # a few layers at a time, so that the float64 temporaries stay in cache
        step = max(1, _GROUP_BYTES // (8 * batch * da * db))
        for first in range(0, len(members), step):
            chunk = members[first : first + step]
            stacked = torch.stack([parts[i] for i in chunk]).to(torch.float64)
            h = stacked.reshape(len(chunk), batch, db, da).transpose(2, 3)  # (G, B, da, db)
            quantized = _quantize_group(h, c, layers, row_major)
            for index, layer in zip(chunk, quantized, strict=True):
                codes[index] = layer
    return _assemble(meta, parts, codes, layers)


def _assemble(
    meta: torch.Tensor, parts: list[torch.Tensor], codes: list[_LayerCodes | None], layers: int
) -> BoundedQuery:
    """The layers' codes joined in layer order, with each layer's offsets (−1: float)."""
    batch = parts[0].shape[0]
    offsets: list[int] = []
    corr_offsets: list[int] = []
    neg_offsets: list[int] = []
    rm_offsets: list[int] = []
    scales: list[torch.Tensor] = []
    eps: list[torch.Tensor] = []
    fine_eps: list[torch.Tensor] = []
    position = corr_position = neg_position = rm_position = 0
    for index, layer in enumerate(codes):
        if layer is None:  # scored in float: the rounding term only
            _, _, c, da, db = (int(v) for v in meta[index, :5])
            h = parts[index].to(torch.float64).reshape(batch, db, da).transpose(1, 2)
            rounding = _rounding(h, c, layers)
            for listed in (offsets, corr_offsets, neg_offsets, rm_offsets):
                listed.append(-1)
            scales.append(torch.ones(batch, dtype=torch.float64))
            eps.append(rounding)
            fine_eps.append(rounding)
            continue
        offsets.append(position)
        corr_offsets.append(corr_position)
        neg_offsets.append(neg_position)
        rm_offsets.append(rm_position)
        position += layer.packed.shape[1]
        corr_position += layer.corrections.shape[1]
        neg_position += layer.negated.shape[1]
        rm_position += layer.rowmajor.shape[1]
        scales.append(layer.scale)
        eps.append(layer.eps)
        fine_eps.append(layer.fine_eps)
    present = [layer for layer in codes if layer is not None]

    def joined(name: str, dtype: torch.dtype) -> torch.Tensor:
        if not present:
            return torch.zeros(batch, 1, dtype=dtype)
        return torch.cat([getattr(layer, name) for layer in present], dim=1).contiguous()

    def table(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64)

    return BoundedQuery(
        table(offsets),
        joined("packed", torch.int8),
        table(corr_offsets),
        joined("corrections", torch.int32),
        torch.stack(scales, dim=1).to(torch.float32).contiguous(),
        _round_up(torch.stack(eps, dim=1)),
        table(neg_offsets),
        joined("negated", torch.int32),
        joined("fine", torch.int8),
        joined("fine_negated", torch.int32),
        _round_up(torch.stack(fine_eps, dim=1)),
        table(rm_offsets),
        joined("rowmajor", torch.int8),
        joined("fine_rowmajor", torch.int8),
    )

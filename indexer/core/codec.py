"""How packed rows are stored: a plain float dtype, or int8 with one scale per segment.

A row's values are grouped in *segments*: per factored layer its left block (c·d1) and its
right block (c·d2), per dense layer its gradient (D). An int8 row stores every value as
round(v / s) with s = max|v| / 127 of its segment, followed by the segment scales as
float32 bytes: width F + 4·segments. Each example keeps its own scale per segment, so
examples whose gradients differ by orders of magnitude lose no relative precision, and a
row stays self-contained (blocks of rows can be read, shipped and decoded independently).

At the same bytes an int8 row holds twice the components of a bf16 row; the rounding error
(≤ s/2 per value) changes scores far less than halving c does (docs/benchmarks.md).
"""

from __future__ import annotations

import torch

from lorif_serve.indexer.core.factors import RowLayout

_SCALE_BYTES = 4  # one float32 per segment
_LEVELS = 127  # symmetric int8: −127 … 127 (−128 unused keeps the code symmetric)


class RowCodec:
    """Encodes (n, F) float rows to the storage dtype and decodes them back.

    Args:
        layout: the row's column map.
        storage: the torch dtype rows are stored in (``torch.int8`` means quantized).
    """

    def __init__(self, layout: RowLayout, storage: torch.dtype) -> None:
        self.storage = storage
        self.quantized = storage == torch.int8
        # Segments in row order, and per layer the segments whose scales multiply its score:
        # (left, right), or (G, -1) for a dense layer, -1 naming a column of ones.
        lengths: list[int] = []
        pairs: list[tuple[int, int]] = []
        for spec in layout.layers:
            if spec.dense:
                pairs.append((len(lengths), -1))
                lengths.append(spec.dim)
            else:
                pairs.append((len(lengths), len(lengths) + 1))
                lengths += [spec.rank * spec.d1, spec.rank * spec.d2]
        self.segment_lengths = torch.tensor(lengths, dtype=torch.long)
        self._pairs = torch.tensor(pairs, dtype=torch.long)
        self._moved: dict[tuple[int, torch.device], torch.Tensor] = {}
        self.values_width = layout.width
        extra = _SCALE_BYTES * len(lengths) if self.quantized else 0
        self.width = layout.width + extra  # columns of the stored dataset

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        """(n, F) float rows → (n, width) rows in the storage dtype (on the CPU)."""
        values = values.detach().to("cpu")
        if not self.quantized:
            return values.to(self.storage).contiguous()
        wide = values.to(torch.float32)
        pieces = torch.split(wide, self.segment_lengths.tolist(), dim=1)
        scales = torch.stack([p.abs().amax(dim=1) for p in pieces], dim=1) / _LEVELS
        codes = torch.round(wide / self._expand(scales).clamp_min(torch.finfo(torch.float32).tiny))
        codes = codes.clamp_(-_LEVELS, _LEVELS).to(torch.int8)
        scale_bytes = scales.contiguous().view(torch.int8)  # (n, 4·segments)
        return torch.cat([codes, scale_bytes], dim=1)

    def scale_byte_offsets(self) -> list[tuple[int, int | None]]:
        """Per layer, where in a stored int8 row its score scales sit (bytes from the row start):
        (left, right) for a factored layer, (G, None) for a dense one."""
        if not self.quantized:
            raise ValueError("only int8 rows store scales")
        at = [self.values_width + _SCALE_BYTES * i for i in range(len(self.segment_lengths))]
        return [(at[a], at[b] if b >= 0 else None) for a, b in self._pairs.tolist()]

    def scales(self, raw: torch.Tensor) -> torch.Tensor:
        """(n, segments) float32 scales of quantized rows."""
        return raw[:, self.values_width :].contiguous().view(torch.float32)

    def codes_into(self, raw: torch.Tensor, out: torch.Tensor) -> torch.Tensor | None:
        """Write the stored numbers, unscaled, into ``out``; return their per-layer score scales.

        A layer's score is bilinear in its stored segments, so scaling the (B, n) score by
        s_L·s_R (or s_G) equals scaling every value first, at a fraction of the cost: the
        scan multiplies by these (n, layers) scales after each layer's product. ``None`` for
        the float dtypes (the values are the numbers).
        """
        if not self.quantized:
            out.copy_(raw)
            return None
        out.copy_(raw[:, : self.values_width])
        segments = self.scales(raw).to(out.dtype)
        padded = torch.cat([segments, segments.new_ones(segments.shape[0], 1)], dim=1)
        pairs = self._on(self._pairs, padded.device)
        return padded[:, pairs[:, 0]] * padded[:, pairs[:, 1]]

    def decode_into(self, raw: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Write the float values of stored rows ``raw`` (n, width) into ``out`` (n, F).

        ``raw`` and ``out`` must be on the same device; returns ``out``.
        """
        if not self.quantized:
            return out.copy_(raw)
        out.copy_(raw[:, : self.values_width])
        return out.mul_(self._expand(self.scales(raw).to(out.dtype)))

    def decode(self, raw: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(n, width) stored rows → a new (n, F) tensor of ``dtype`` on ``raw``'s device."""
        out = torch.empty((raw.shape[0], self.values_width), dtype=dtype, device=raw.device)
        return self.decode_into(raw, out)

    def _expand(self, scales: torch.Tensor) -> torch.Tensor:
        """(n, segments) → (n, F): each segment's scale repeated over its columns."""
        lengths = self._on(self.segment_lengths, scales.device)
        return torch.repeat_interleave(scales, lengths, dim=1, output_size=self.values_width)

    def _on(self, index: torch.Tensor, device: torch.device) -> torch.Tensor:
        """A small index tensor on ``device``, moved once per device, not once per block."""
        key = (id(index), device)
        if key not in self._moved:
            self._moved[key] = index.to(device)
        return self._moved[key]

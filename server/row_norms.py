"""The bounded pass's row norms s_a·s_b·Σ_k ‖a_k‖‖b_k‖ per layer (docs/server.md).

They do not depend on the query, only on which layers it scores. Resident rows: one table of
every layer's, computed at start-up before the rows are tiled; a query naming fewer layers
gets those columns (a layer's norm does not depend on the others). Streamed rows: every
layer's are computed at start-up from the memory map (``FusedScanner.warm``) and kept
(layers × 4 bytes per row); a query naming fewer layers has its own kept as its first scan
computes them, block by block.
"""

from __future__ import annotations

import torch

from lorif_serve.indexer.core.factors import LayerSpec
from lorif_serve.server.kernels.fused import FusedInt8Scan
from lorif_serve.server.kernels.prepared import PreparedQuery


class RowNorms:
    def __init__(self, kernel: FusedInt8Scan, layers: list[LayerSpec], n_rows: int) -> None:
        self.kernel, self.layers, self.n_rows = kernel, layers, n_rows
        self._every: torch.Tensor | None = None  # (n, every layer) of the resident rows
        self._resident: dict[tuple[str, ...], torch.Tensor] = {}
        self._streamed: dict[tuple[str, ...], tuple[torch.Tensor | None, int]] = {}

    @property
    def resident_ready(self) -> bool:
        return self._every is not None

    def set_resident(self, every_layer: torch.Tensor) -> None:
        """The (n, layers) norms of every layer of the resident rows, in layout order."""
        self._every, self._resident = every_layer, {}

    def block(
        self,
        query: PreparedQuery,
        layers: tuple[str, ...],
        raw: torch.Tensor,
        start: int,
        resident: bool,
    ) -> torch.Tensor:
        """(len(raw), query layers) norms of rows [start, start + len(raw))."""
        stop = start + raw.shape[0]
        if resident:
            return self._columns(layers)[start:stop]
        cache, filled = self._streamed.get(layers, (None, 0))
        if cache is not None and stop <= filled:
            return cache[start:stop]
        norms = self.kernel.row_norms(query, raw)
        if cache is None:
            cache = torch.empty(self.n_rows, norms.shape[1], dtype=torch.float32)
        if start == filled:  # blocks arrive in order; a cache grows only at its end
            cache[start:stop] = norms
            filled = stop
        self._streamed[layers] = (cache, filled)
        return norms

    def _columns(self, layers: tuple[str, ...]) -> torch.Tensor:
        if layers not in self._resident:
            if self._every is None:
                raise RuntimeError("the resident rows' norms are computed at start-up")
            names = set(layers)
            columns = [i for i, s in enumerate(self.layers) if s.name in names]
            self._resident[layers] = self._every[:, columns].contiguous()
        return self._resident[layers]

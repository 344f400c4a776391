"""Running top-k (and bottom-k) over scored row blocks, with ties and row masks decided
the same way in every scan path: equal scores keep the lower row number."""

from __future__ import annotations

import torch


class RowMerger:
    """Running best (or worst) k over scored rows with explicit row numbers.

    ``allowed`` (B, N) bool: a query's rows outside its mask score −inf (+inf for the worst
    k), so they are kept only when fewer than k rows are allowed; the caller cuts those off
    (``allowed_counts``).
    """

    def __init__(self, k: int, largest: bool, allowed: torch.Tensor | None = None) -> None:
        self.k, self.largest, self.allowed = k, largest, allowed
        self.scores: torch.Tensor | None = None
        self.rows: torch.Tensor | None = None

    def add(self, scores: torch.Tensor, rows: torch.Tensor) -> None:
        """scores (B, m) of rows (m,) or (B, m). Among equal scores the lower row number is
        kept, so the k kept do not depend on how the rows were split into blocks."""
        if self.allowed is not None:
            scores = scores.masked_fill(~allowed_at(self.allowed, rows), self._fill)
        rows = rows.expand_as(scores) if rows.dim() == 1 else rows
        if self.scores is not None and self.rows is not None:
            scores = torch.cat([self.scores, scores], dim=1)
            rows = torch.cat([self.rows, rows], dim=1)
        take = min(self.k, scores.shape[1])
        values, picked = scores.topk(take, dim=1, largest=self.largest, sorted=False)
        kept = rows.gather(1, picked)
        edge = values.min(dim=1).values if self.largest else values.max(dim=1).values
        reach = scores >= edge[:, None] if self.largest else scores <= edge[:, None]
        if int(reach.sum(dim=1).max()) > take:  # ties at the k-th value: lowest rows win
            values, kept = values.clone(), kept.clone()
            for b in range(scores.shape[0]):
                at = reach[b].nonzero().squeeze(1)
                order = _score_then_row(scores[b, at], rows[b, at], self.largest)[:take]
                values[b], kept[b] = scores[b, at[order]], rows[b, at[order]]
        self.scores, self.rows = values, kept

    @property
    def _fill(self) -> float:
        return float("-inf") if self.largest else float("inf")

    def kth(self) -> torch.Tensor:
        """(B,) the current k-th value: −inf (or +inf) until k scores were merged."""
        if self.scores is None or self.scores.shape[1] < self.k:
            batch = 0 if self.scores is None else self.scores.shape[0]
            fill = float("-inf") if self.largest else float("inf")
            where = None if self.scores is None else self.scores.device
            return torch.full((batch,), fill, dtype=torch.float32, device=where)
        if self.largest:
            return self.scores.min(dim=1).values
        return self.scores.max(dim=1).values

    def kth_with(self, scores: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(B,) the k-th value were these scores (B, m) of rows (m,) merged, leaving this
        merger as it is (rows merged twice would count twice towards the k). Ties do not
        change the k-th value, so this skips their ordering."""
        if self.allowed is not None:
            scores = scores.masked_fill(~allowed_at(self.allowed, rows), self._fill)
        if self.scores is not None:
            scores = torch.cat([self.scores, scores], dim=1)
        if scores.shape[1] < self.k:
            return torch.full((scores.shape[0],), self._fill, dtype=torch.float32)
        values = scores.topk(self.k, dim=1, largest=self.largest, sorted=False).values
        return values.amin(dim=1) if self.largest else values.amax(dim=1)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Sorted by score, ties by row number (deterministic)."""
        if self.scores is None or self.rows is None:
            raise RuntimeError("nothing was merged")
        order = torch.stack(
            [
                _score_then_row(s, r, self.largest)
                for s, r in zip(self.scores, self.rows, strict=True)
            ]
        )
        return self.scores.gather(1, order), self.rows.gather(1, order)


def allowed_at(allowed: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(B, m) mask entries of rows (m,) (the same for every query) or (B, m)."""
    if rows.dim() == 1:
        return allowed.index_select(1, rows)
    return allowed.gather(1, rows)


def _score_then_row(scores: torch.Tensor, rows: torch.Tensor, largest: bool) -> torch.Tensor:
    """Positions ordered by score (descending if ``largest``), equal scores by row number."""
    by_row = torch.argsort(rows, stable=True)
    by_score = torch.argsort(scores[by_row], descending=largest, stable=True)
    return by_row[by_score]

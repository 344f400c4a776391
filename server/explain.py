"""Explanations of returned examples: per-layer, per-token and per-completion-token parts.

Runs on the scan thread after the scan, for the returned rows only, so the scan itself
costs the same with or without ``explain`` (docs/server.md, "Explanations").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from lorif_serve.client.protocol import Explanation, LayerPart, QueryExplanation, TokenSpan
from lorif_serve.indexer.core.explain import per_token_queries, stored_space_adjoint, token_parts
from lorif_serve.indexer.core.gradients import ProjectedGradients, collate
from lorif_serve.indexer.core.kronecker import AnyCurvature
from lorif_serve.indexer.core.query import (
    Encoded,
    ScanQuery,
    precondition,
    query_gradients,
    score_block,
    token_budget_groups,
)
from lorif_serve.indexer.inputs.tokens import encode_prompt_completion
from lorif_serve.indexer.store.reader import ExampleRecord, IndexReader

# The completion's first tokens explained (one gradient each): ~2 featurize passes at 64.
MAX_EXPLAINED_COMPLETION_TOKENS = 64


def token_offsets(tokenizer: Any, text: str, ids: Sequence[int]) -> list[tuple[int, int]]:
    """Character span of each token of ``text`` (fast tokenizers' offsets, or by decoding)."""
    if getattr(tokenizer, "is_fast", False):
        mapping = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = [tuple(pair) for pair in mapping["offset_mapping"]]
        if len(offsets) == len(ids):
            return [(int(a), int(b)) for a, b in offsets]
    spans, at = [], 0
    for i in range(len(ids)):  # prefix decoding: robust to multi-byte tokens
        end = len(tokenizer.decode(list(ids[: i + 1])))
        spans.append((min(at, len(text)), min(end, len(text))))
        at = end
    return spans


def _prompt_chars(record: ExampleRecord) -> int | None:
    """Where a prompt/completion record's completion starts in its text (None: a chunk)."""
    chars = record.metadata.get("prompt_chars")
    return chars if isinstance(chars, int) and 0 <= chars <= len(record.text) else None


class Explainer:
    """Splits the scores of returned examples; needs the model (not the scan)."""

    def __init__(
        self,
        reader: IndexReader,
        capture: ProjectedGradients,
        tokenizer: Any,
        device: torch.device,
        curvatures: Mapping[str, AnyCurvature],
        max_batch_tokens: int | None = None,
    ) -> None:
        self.reader, self.capture, self.tokenizer = reader, capture, tokenizer
        self.device, self.curvatures = device, curvatures
        self.max_batch_tokens = max_batch_tokens
        self.specs = reader.layers

    def explain(
        self,
        encoded: Encoded,
        completion: str,
        hq: Mapping[str, torch.Tensor],
        records: Sequence[ExampleRecord],
    ) -> tuple[QueryExplanation, list[Explanation]]:
        """``hq``: the query's preconditioned gradient per scored layer, (d1, d2) each."""
        rows = self._stored_rows([r.row for r in records])
        layers = self._layer_parts(hq, rows)
        query_tokens, per_token, capped = self._completion_parts(encoded, completion, hq, rows)
        token_lists, recomputed, matches = self._token_parts(hq, records)
        explanations = [
            Explanation(
                layers=[LayerPart(layer=name, score=float(v)) for name, v in layers[i].items()],
                tokens=token_lists[i],
                recomputed_score=recomputed[i],
                tokens_match=matches[i],
                completion=[float(v) for v in per_token[:, i].tolist()],
            )
            for i in range(len(records))
        ]
        return QueryExplanation(completion_tokens=query_tokens, capped=capped), explanations

    def _stored_rows(self, rows: Sequence[int]) -> torch.Tensor:
        if not rows:
            return torch.empty(0, self.reader.layout.width)
        return torch.cat([self.reader.values(row, row + 1) for row in rows])

    def _layer_parts(
        self, hq: Mapping[str, torch.Tensor], rows: torch.Tensor
    ) -> list[dict[str, float]]:
        parts: list[dict[str, float]] = [{} for _ in range(rows.shape[0])]
        for name, h in hq.items():
            scores = score_block(self.reader.layout, rows, ScanQuery({name: h[None].float()}))
            for i, value in enumerate(scores[0].tolist()):
                parts[i][name] = float(value)
        return parts

    def _completion_parts(
        self,
        encoded: Encoded,
        completion: str,
        hq: Mapping[str, torch.Tensor],
        rows: torch.Tensor,
    ) -> tuple[list[TokenSpan], torch.Tensor, bool]:
        """The explained completion tokens (with their losses) and (T, m) stored-score parts."""
        pieces, capped = per_token_queries(encoded, MAX_EXPLAINED_COMPLETION_TOKENS)
        # The hooks directly, not the featurizer: its memory trim after an unusually large
        # pass would make the next explanation fault its pages in again.
        grads, losses = query_gradients(self.capture, pieces, self.device, self.max_batch_tokens)
        preconditioned = precondition(self.specs, self.curvatures, grads)
        scored = {name: preconditioned[name].float() for name in hq}
        per_token = score_block(self.reader.layout, rows, ScanQuery(scored))
        ids = encoded[0]
        first = len(ids) - self._count(completion)  # the completion's first token in ``ids``
        offsets = token_offsets(self.tokenizer, completion, ids[first:])
        spans = []
        for j, (_, t) in enumerate(pieces):
            a, b = offsets[t - first] if 0 <= t - first < len(offsets) else (0, 0)
            spans.append(TokenSpan(text=completion[a:b], start=a, end=b, score=float(losses[j])))
        return spans, per_token, capped

    def _example_tokens(self, record: ExampleRecord) -> Encoded:
        """The example re-tokenized as the build did: chunk text, or prompt + completion."""
        prompt_chars = _prompt_chars(record)
        if prompt_chars is not None:
            ids, start = encode_prompt_completion(
                self.tokenizer, record.text[:prompt_chars], record.text[prompt_chars:]
            )
            return ids, start
        return list(self.tokenizer(record.text, add_special_tokens=False)["input_ids"]), 0

    def _token_parts(
        self, hq: Mapping[str, torch.Tensor], records: Sequence[ExampleRecord]
    ) -> tuple[list[list[TokenSpan]], list[float], list[bool]]:
        directions = {
            name: stored_space_adjoint(self.curvatures[name], h.to(self.device))
            for name, h in hq.items()
        }
        encoded = [self._example_tokens(r) for r in records]
        spans: list[list[TokenSpan]] = [[] for _ in records]
        totals: list[float] = [0.0] * len(records)
        usable = [i for i, (ids, _) in enumerate(encoded) if len(ids) >= 2]
        lengths = [len(encoded[i][0]) for i in usable]
        for group in token_budget_groups(lengths, self.max_batch_tokens):
            members = [usable[g] for g in group]
            batch = collate([encoded[i][0] for i in members], [encoded[i][1] for i in members])
            parts, _, _ = token_parts(self.capture, batch.to(self.device), directions)
            for row, i in enumerate(members):
                spans[i], totals[i] = self._spans(records[i], encoded[i][0], parts[row].cpu())
        matches = [len(e[0]) == r.tokens for e, r in zip(encoded, records, strict=True)]
        return spans, totals, matches

    def _spans(
        self, record: ExampleRecord, ids: list[int], parts: torch.Tensor
    ) -> tuple[list[TokenSpan], float]:
        offsets = self._record_offsets(record, ids)
        spans = [
            TokenSpan(text=record.text[a:b], start=a, end=b, score=float(parts[s]))
            for s, (a, b) in enumerate(offsets)
        ]
        return spans, float(parts[: len(ids)].double().sum())

    def _record_offsets(self, record: ExampleRecord, ids: list[int]) -> list[tuple[int, int]]:
        prompt_chars = _prompt_chars(record)
        if prompt_chars is None:
            return token_offsets(self.tokenizer, record.text, ids)
        prompt, rest = record.text[:prompt_chars], record.text[prompt_chars:]
        head = token_offsets(self.tokenizer, prompt, ids[: len(ids) - self._count(rest)])
        tail = token_offsets(self.tokenizer, rest, ids[len(head) :])
        return head + [(a + prompt_chars, b + prompt_chars) for a, b in tail]

    def _count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0

"""The output layer and the loss in one pass, a few rows of logits at a time.

Attribution differentiates every loss right after computing it, and for a linear output
layer (z = hWᵀ + b) the gradient with respect to its input has a closed form:
∂ℓ/∂h_t = (softmax(z_t) − onehot(y_t)) W at each labelled position t, 0 elsewhere. Autograd's
route (logits, shift slice, log-softmax, NLL, and their backward) writes about five
(B, T, V) tensors; on a CPU the fresh pages of those buffers cost more than the arithmetic
(demo model, 16 queries of 80 tokens: ≈ 21 k page faults, 86 MB, per pass). Here the logits
of ``_chunk_rows`` positions at a time go into one reused buffer, are turned into the loss
and the softmax in place, and leave only the (positions, hidden) gradient of h, which the
backward scales by the incoming (B,) gradient.

``OutputHead`` takes the output layer's input from the model with a forward pre-hook and
hands the layer an empty slice, so the model's own logits cost nothing. Whether that is
exact for a model (no scaling or soft-capping of the logits after the layer) is checked once
against the model's own logits (``verify``); where it is not, callers fall back to them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

IGNORE = -100  # label value that contributes no loss (prompt tokens, padding)
_CHUNK_BYTES = 4 << 20  # one chunk of float32 logits: stays in L2/L3 between its passes
_VERIFY_RTOL = 1e-4
# Chunks are padded with zero rows to a multiple of this: the BLAS rounds some products of
# few rows (5-7 and 9-11 here) differently on one thread and on two, while every multiple of
# 16 measured the same, and an index must not depend on how many threads built it (a 2-thread
# build and the 1-thread ranks of a sharded one stored different rows without the padding).
_ROW_MULTIPLE = 16


def _chunk_rows(vocab: int) -> int:
    return max(_ROW_MULTIPLE, _CHUNK_BYTES // (4 * vocab) // _ROW_MULTIPLE * _ROW_MULTIPLE)


def _padded(
    flat: torch.Tensor, wanted: torch.Tensor, picked: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The picked positions' inputs (rows, H) and targets (rows, 1), padded with zero rows
    (target 0; their results are dropped) to a multiple of ``_ROW_MULTIPLE``."""
    used = picked.shape[0]
    padded = -(-used // _ROW_MULTIPLE) * _ROW_MULTIPLE  # ≤ the chunk rows, a multiple too
    inputs = flat.new_empty(padded, flat.shape[1])
    torch.index_select(flat, 0, picked, out=inputs[:used])
    inputs[used:] = 0
    labels = wanted.new_zeros(padded, 1)
    labels[:used, 0] = wanted[picked]
    return inputs, labels


class _OutputCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        scratch: torch.Tensor,
    ) -> torch.Tensor:
        """``hidden`` (B, T, H); ``targets`` (B, T): the token position t predicts, or
        IGNORE; ``scratch`` a float32 (rows, V) buffer. Returns the (B,) summed losses."""
        batch, length, width = hidden.shape
        flat = hidden.reshape(batch * length, width)
        wanted = targets.reshape(-1)
        rows = (wanted != IGNORE).nonzero().squeeze(1)
        per_row = torch.zeros(batch * length, dtype=scratch.dtype, device=hidden.device)
        grad = torch.zeros_like(flat)
        step = scratch.shape[0]
        for first in range(0, rows.shape[0], step):
            picked = rows[first : first + step]
            used = picked.shape[0]
            inputs, labels = _padded(flat, wanted, picked)
            z = scratch[: inputs.shape[0]]
            if hidden.dtype == scratch.dtype:
                torch.mm(inputs, weight.t(), out=z)
            else:  # the layer's own dtype for its product, float32 for the softmax
                z.copy_(inputs @ weight.t())
            if bias is not None:
                z.add_(bias)
            picked_logit = z.gather(1, labels)
            top = z.amax(dim=1, keepdim=True)
            z.sub_(top).exp_()
            total = z.sum(dim=1, keepdim=True)
            per_row[picked] = (top + total.log() - picked_logit)[:used, 0]
            z.div_(total)  # softmax
            z.scatter_add_(1, labels, torch.full_like(total, -1.0))
            grad[picked] = (z.to(weight.dtype) @ weight)[:used].to(grad.dtype)
        ctx.save_for_backward(grad)
        ctx.shape, ctx.used = hidden.shape, False
        return per_row.view(batch, length).sum(dim=1)

    @staticmethod
    def backward(ctx: Any, grad_losses: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if ctx.used:
            raise RuntimeError("the fused output layer's gradient is consumed by one backward")
        ctx.used = True
        (grad,) = ctx.saved_tensors
        batch, length, width = ctx.shape
        scale = grad_losses.to(grad.dtype).repeat_interleave(length).unsqueeze(1)
        return grad.mul_(scale).view(batch, length, width), None, None, None, None


class OutputHead:
    """A model's linear output layer, run by ``loss`` instead of by the model.

    Inside ``capturing()`` the layer records its input and computes nothing; ``loss`` then
    gives the per-example summed cross-entropy (B,), differentiable with respect to that
    input (only one backward: the gradient is consumed in place).
    """

    def __init__(self, layer: nn.Linear) -> None:
        self.layer = layer
        self.verified: bool | None = None  # None: not compared with the model's logits yet
        self._hidden: torch.Tensor | None = None
        self._scratch: torch.Tensor | None = None

    @classmethod
    def of(cls, model: nn.Module, tracked: object) -> OutputHead | None:
        """The model's output layer, where it is an ``nn.Linear`` no tracked hook needs."""
        layer = getattr(model, "get_output_embeddings", lambda: None)()
        if not isinstance(layer, nn.Linear) or any(m is layer for m in tracked):  # type: ignore[attr-defined]
            return None
        return cls(layer)

    @contextmanager
    def capturing(self) -> Iterator[None]:
        def take_input(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[Any, ...]:
            self._hidden = args[0]
            return (args[0][..., :0, :], *args[1:])  # the layer runs on no positions

        handle = self.layer.register_forward_pre_hook(take_input)
        try:
            yield
        finally:
            handle.remove()

    @property
    def hidden(self) -> torch.Tensor:
        """The output layer's input from the last forward inside ``capturing`` (B, T, H)."""
        if self._hidden is None:
            raise RuntimeError("the model never called its output layer")
        return self._hidden

    def loss(self, labels: torch.Tensor) -> torch.Tensor:
        """Summed causal cross-entropy per example of the captured input, (B,).

        ``labels`` (B, T) aligned with the captured positions: position t predicts
        labels[:, t + 1].
        """
        if self.layer.weight.requires_grad:
            raise RuntimeError("the fused output layer gives no weight gradient: freeze it")
        hidden, self._hidden = self.hidden, None
        targets = torch.full_like(labels, IGNORE)
        targets[:, :-1] = labels[:, 1:]
        bias = self.layer.bias
        result: torch.Tensor = _OutputCrossEntropy.apply(
            hidden, self.layer.weight, bias, targets, self._buffer(hidden)
        )
        return result

    def verify(self, reference: torch.Tensor, fused: torch.Tensor) -> bool:
        """Record whether the fused losses match the model's own (same batch)."""
        scale = reference.abs().max().clamp_min(1.0)
        self.verified = bool(((reference - fused).abs() <= _VERIFY_RTOL * scale).all())
        return self.verified

    def _buffer(self, like: torch.Tensor) -> torch.Tensor:
        vocab = self.layer.out_features
        dtype = torch.promote_types(like.dtype, torch.float32)
        scratch = self._scratch
        if scratch is None or scratch.device != like.device or scratch.dtype != dtype:
            scratch = torch.empty(_chunk_rows(vocab), vocab, dtype=dtype, device=like.device)
            self._scratch = scratch
        return scratch

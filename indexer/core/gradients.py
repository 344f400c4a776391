"""Per-example projected gradients of every tracked layer in one forward/backward (docs/method.md).

For a layer with inputs X (T, I) and output gradients δY (T, O) the gradient of the
example's loss w.r.t. the weight is δYᵀX (nn.Linear) or XᵀδY (Conv1D); both project to
G = (X P_in)ᵀ (δY P_out) (d1, d2), so hooks on inputs and outputs serve both layer kinds and
the I×O gradient is never formed. Weight gradients are switched off: only activation
gradients flow, which is what makes the pass cheap.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from lorif_serve.indexer.core.output_head import IGNORE, OutputHead
from lorif_serve.indexer.core.projection import LayerProjection

Observer = Callable[[str, torch.Tensor, torch.Tensor], None]


@dataclass
class TokenBatch:
    """A right-padded batch. ``labels[b, t]`` is the target for predicting token t, or IGNORE."""

    input_ids: torch.Tensor  # (B, T) int64
    attention_mask: torch.Tensor  # (B, T) int64, 1 = real token
    labels: torch.Tensor  # (B, T) int64

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(
            self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device)
        )


def collate(sequences: list[list[int]], loss_starts: list[int], pad_id: int = 0) -> TokenBatch:
    """Right-pad token sequences; tokens before ``loss_starts[b]`` are context (no loss)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    labels = torch.full((len(sequences), width), IGNORE, dtype=torch.long)
    for row, (tokens, start) in enumerate(zip(sequences, loss_starts, strict=True)):
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[row, : len(tokens)] = 1
        labels[row, start : len(tokens)] = ids[row, start : len(tokens)]
    return TokenBatch(ids, mask, labels)


def _logits_to_keep_argument(model: nn.Module, tracked: object) -> str | None:
    """The forward argument that limits the logits to the last positions, if the model has
    one and its output layer is not tracked (a tracked layer must see every position)."""
    output = getattr(model, "get_output_embeddings", lambda: None)()
    if output is not None and any(module is output for module in tracked):  # type: ignore[attr-defined]
        return None
    parameters = inspect.signature(model.forward).parameters
    for name in ("logits_to_keep", "num_logits_to_keep"):
        if name in parameters:
            return name
    return None


def token_summed_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example causal cross-entropy summed over the labelled tokens. Returns (B,)."""
    shifted = (
        logits[:, :-1].float()
        if logits.dtype in (torch.float16, torch.bfloat16)
        else logits[:, :-1]
    )
    targets = labels[:, 1:]
    per_token = nn.functional.cross_entropy(
        shifted.reshape(-1, shifted.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE,
        reduction="none",
    ).view(targets.shape)
    return per_token.sum(dim=1)


@contextmanager
def _weights_frozen(model: nn.Module) -> Iterator[None]:
    """Weights without gradients and the model in eval mode for the block, then as before.

    Only what needs changing is changed: a model that is already frozen and in eval mode
    (the server's) costs nothing here (switching every module's mode took ≈ 0.6 ms a pass).
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    switch = any(m.training for m in model.modules())
    for p in trainable:
        p.requires_grad_(False)
    if switch:
        model.eval()  # attribution is about the deployed function: no dropout
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)
        if switch:
            model.train(was_training)


class ProjectedGradients:
    """Computes {layer: (B, d1, d2)} projected per-example gradients for a model.

    Args:
        model: a Hugging Face causal LM (anything whose forward takes ``input_ids`` and
            ``attention_mask`` and returns ``.logits``).
        projections: one LayerProjection per tracked module name.
    """

    def __init__(self, model: nn.Module, projections: Mapping[str, LayerProjection]) -> None:
        modules = dict(model.named_modules())
        missing = [name for name in projections if name not in modules]
        if missing:
            raise ValueError(f"model has no module named {missing[:5]}")
        self.model = model
        self.projections = dict(projections)
        self._modules = {name: modules[name] for name in projections}
        self._cache: dict[tuple[str, torch.device, torch.dtype], LayerProjection] = {}
        self._keep_argument = _logits_to_keep_argument(model, self._modules.values())
        self._head = OutputHead.of(model, self._modules.values())
        self._embeds: torch.Tensor | None = None

    def _projection(self, name: str, like: torch.Tensor) -> LayerProjection:
        dtype = torch.promote_types(like.dtype, torch.float32)
        key = (name, like.device, dtype)
        if key not in self._cache:
            self._cache[key] = self.projections[name].to(like.device, dtype)
        return self._cache[key]

    def __call__(
        self, batch: TokenBatch, observe: Observer | None = None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Returns ({layer: G (B, d1, d2)}, per-example loss (B,)).

        ``observe(layer, x̃ (B, T, d1), δ̃ (B, T, d2))`` sees every layer's projected per-token
        inputs and output gradients (zero at padding), e.g. to accumulate Kronecker factors.
        """
        if self._head is not None and self._head.verified is None:
            self._verify_head(batch)
        grads: dict[str, torch.Tensor] = {}
        seen: set[str] = set()
        handles = [self._embedding_hook()]
        mask = batch.attention_mask.unsqueeze(-1)
        for name, module in self._modules.items():
            hook = self._forward_hook(name, mask, grads, seen, observe)
            handles.append(module.register_forward_hook(hook))
        try:
            with _weights_frozen(self.model), torch.enable_grad():
                self._embeds = None
                keep = self._positions_to_score(batch.labels)
                extra = {self._keep_argument: keep} if keep and self._keep_argument else {}
                losses = self._losses(batch, extra, self._head if self.fused_output else None)
                if self._embeds is None:
                    raise RuntimeError("the model never called its input embeddings")
                torch.autograd.backward(losses.sum(), inputs=[self._embeds])
        finally:
            for handle in handles:
                handle.remove()
            self._embeds = None
        not_seen = set(self._modules) - set(grads)
        if not_seen:
            raise RuntimeError(f"tracked layers got no gradient: {sorted(not_seen)[:5]}")
        return grads, losses.detach()

    @property
    def fused_output(self) -> bool:
        """Whether the losses come from the fused output layer (``output_head``): known
        after the first batch; False where the model's own logits are used."""
        return self._head is not None and bool(self._head.verified)

    def _losses(
        self, batch: TokenBatch, extra: dict[str, int], head: OutputHead | None
    ) -> torch.Tensor:
        """Per-example losses (B,) of one forward: through ``head`` (the fused output layer),
        or from the model's logits."""
        inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, **extra}
        if head is None:
            out = self.model(**inputs)
            labels = batch.labels[:, -out.logits.shape[1] :]  # the kept positions' labels
            return token_summed_loss(out.logits, labels)
        with head.capturing():
            self.model(**inputs)
        return head.loss(batch.labels[:, -head.hidden.shape[1] :])

    def _verify_head(self, batch: TokenBatch) -> None:
        """Once per model: the fused output layer against the model's own logits (a model
        may scale or cap its logits after the layer), on two labelled examples of a real
        batch. A batch with nothing labelled leaves the check to the next one."""
        assert self._head is not None
        rows = (batch.labels != IGNORE).any(dim=1).nonzero().squeeze(1)[:2]
        if rows.numel() == 0:
            return
        part = TokenBatch(batch.input_ids[rows], batch.attention_mask[rows], batch.labels[rows])
        with _weights_frozen(self.model), torch.no_grad():
            reference = self._losses(part, {}, None)
            try:
                fused = self._losses(part, {}, self._head)
            except RuntimeError:  # e.g. a forward that never calls its output layer
                self._head.verified = False
                return
        self._head.verify(reference, fused)

    @staticmethod
    def _positions_to_score(labels: torch.Tensor) -> int:
        """How many final positions need logits: from the one before the first labelled
        token to the end (0: all). A query's prompt needs no logits, and the output layer
        over a large vocabulary is most of a small model's forward and backward; the loss,
        and so every gradient, is the same."""
        labelled = (labels != IGNORE).any(dim=0).nonzero()
        if labelled.numel() == 0:
            return 0
        keep = labels.shape[1] - int(labelled[0]) + 1
        return keep if keep < labels.shape[1] else 0

    def _embedding_hook(self) -> torch.utils.hooks.RemovableHandle:
        embeddings = self.model.get_input_embeddings()  # type: ignore[operator]

        def hook(
            _module: nn.Module, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor
        ) -> None:
            # With frozen weights nothing upstream needs a gradient: make the embedding
            # output the leaf from which activation gradients flow.
            output.requires_grad_(True)
            self._embeds = output

        return embeddings.register_forward_hook(hook)

    def _forward_hook(
        self,
        name: str,
        mask: torch.Tensor,
        grads: dict[str, torch.Tensor],
        seen: set[str],
        observe: Observer | None,
    ) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
        def hook(
            _module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
        ) -> None:
            if name in seen:
                raise RuntimeError(f"layer {name} ran twice in one forward; cannot attribute")
            seen.add(name)
            proj = self._projection(name, inputs[0])
            # padding contributes 0; masked after the projection, on d1 columns instead of
            # the layer's full input width (the same numbers: the mask is 0 or 1)
            x_proj = (inputs[0].to(proj.p_in.dtype) @ proj.p_in) * mask.to(proj.p_in.dtype)

            def on_grad(grad_out: torch.Tensor) -> None:
                dy_proj = grad_out.to(proj.p_out.dtype) @ proj.p_out  # (B, T, d2)
                grads[name] = x_proj.transpose(1, 2) @ dy_proj  # (B, d1, d2)
                if observe is not None:
                    observe(name, x_proj, dy_proj)

            output.register_hook(on_grad)

        return hook

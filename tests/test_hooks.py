"""Hooked per-example projected gradients equal a naive per-example autograd loop."""

import pytest
import torch

from lorif_serve.indexer.core.gradients import ProjectedGradients, collate, token_summed_loss
from lorif_serve.indexer.core.projection import make_projection
from lorif_serve.indexer.inputs.layers import find_layers
from tests.tiny import random_sequences, tiny_gpt2, tiny_llama


def naive_projected(model, layers, projections, tokens, loss_start):
    """Full weight gradients of one unpadded example, projected afterwards."""
    model.zero_grad()
    for p in model.parameters():
        p.requires_grad_(True)
    batch = collate([tokens], [loss_start])
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    token_summed_loss(out.logits, batch.labels).sum().backward()
    modules = dict(model.named_modules())
    result = {}
    for layer in layers:
        grad_w = modules[layer.name].weight.grad
        # nn.Linear stores (O, I); Conv1D stores (I, O).
        grad_io = grad_w.T if layer.kind == "linear" else grad_w
        proj = projections[layer.name]
        result[layer.name] = proj.p_in.double().T @ grad_io @ proj.p_out.double()
    return result


@pytest.mark.parametrize(
    ("factory", "loss_starts"),
    [
        (tiny_llama, [0, 2, 1, 0, 3]),  # prompt masking on some examples
        (tiny_gpt2, [0, 2, 1, 0, 3]),
        (tiny_llama, [3, 2, 4, 2, 3]),  # every example has a prompt: logits from position 1 on
    ],
)
def test_hooks_equal_per_example_loop(factory, loss_starts):
    model = factory()
    layers = find_layers(model)
    assert {layer.kind for layer in layers} == ({"conv1d"} if factory is tiny_gpt2 else {"linear"})
    projections = {
        layer.name: make_projection(layer.name, layer.in_features, layer.out_features, 5, 7, 3)
        for layer in layers
    }
    sequences = random_sequences(5)
    batch = collate(sequences, loss_starts)
    capture = ProjectedGradients(model, projections)
    if min(loss_starts) > 1:  # the model is asked for fewer logits, and the result is the same
        assert capture._keep_argument and capture._positions_to_score(batch.labels) > 0
    hooked, losses = capture(batch)
    for row, (tokens, start) in enumerate(zip(sequences, loss_starts, strict=True)):
        reference = naive_projected(model, layers, projections, tokens, start)
        for name, expected in reference.items():
            torch.testing.assert_close(hooked[name][row], expected, rtol=1e-9, atol=1e-11)
    # Weights were restored to trainable, the model to eval.
    assert all(p.requires_grad for p in model.parameters())
    assert losses.shape == (5,)


def test_padding_does_not_change_gradients():
    model = tiny_llama()
    layers = find_layers(model)
    projections = {
        layer.name: make_projection(layer.name, layer.in_features, layer.out_features, 4, 4, 0)
        for layer in layers
    }
    capture = ProjectedGradients(model, projections)
    short, long = (
        random_sequences(2, seed=7, low=4, high=5)[0],
        random_sequences(1, seed=8, low=20, high=21)[0],
    )
    alone, _ = capture(collate([short], [1]))
    padded, _ = capture(collate([short, long], [1, 0]))
    for name in alone:
        torch.testing.assert_close(padded[name][0], alone[name][0], rtol=1e-9, atol=1e-11)


def test_layer_patterns_and_errors():
    model = tiny_llama()
    mlp = find_layers(model, ["*.mlp.*"])
    assert mlp and all(".mlp." in layer.name for layer in mlp)
    assert "lm_head" not in {layer.name for layer in find_layers(model)}
    with pytest.raises(ValueError, match="no linear layer matches"):
        find_layers(model, ["*.nothing"])

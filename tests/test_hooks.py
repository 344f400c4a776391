"""Hooked per-example projected gradients equal a naive per-example autograd loop."""

import pytest
import torch

from lorif_serve.indexer.core.gradients import ProjectedGradients, collate, token_summed_loss
from lorif_serve.indexer.core.output_head import IGNORE, OutputHead
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
    assert capture.fused_output  # the losses and their gradients came from the fused layer
    for row, (tokens, start) in enumerate(zip(sequences, loss_starts, strict=True)):
        reference = naive_projected(model, layers, projections, tokens, start)
        for name, expected in reference.items():
            torch.testing.assert_close(hooked[name][row], expected, rtol=1e-9, atol=1e-11)
    # Weights were restored to trainable, the model to eval.
    assert all(p.requires_grad for p in model.parameters())
    assert losses.shape == (5,)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_output_layer_equals_autograd_through_the_logits(dtype):
    """Losses and the gradient reaching the output layer's input, chunked (a vocabulary
    long enough for several chunks, ignored positions inside and between examples)."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 40_000, bias=True, dtype=dtype)
    layer.requires_grad_(False)
    head = OutputHead(layer)
    hidden = torch.randn(3, 9, 6, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, 40_000, (3, 9))
    labels[0, :4] = IGNORE
    labels[2, 6:] = IGNORE
    weights = torch.randn(3, dtype=dtype)
    expected = token_summed_loss(layer(hidden), labels)
    (expected_grad,) = torch.autograd.grad((weights * expected).sum(), hidden)
    with head.capturing():
        empty = layer(hidden)
    assert empty.shape == (3, 0, 40_000)
    got = head.loss(labels)
    (got_grad,) = torch.autograd.grad((weights * got).sum(), hidden)
    tolerance = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {}
    torch.testing.assert_close(got, expected, **tolerance)
    torch.testing.assert_close(got_grad, expected_grad, **tolerance)


def small_projections(layers):
    return {
        layer.name: make_projection(layer.name, layer.in_features, layer.out_features, 4, 4, 0)
        for layer in layers
    }


def assert_model_logits_used(model, capture, projections, starts, seed):
    """The capture fell back to the model's logits, and its gradients equal the loop's."""
    layers = find_layers(model)
    sequences = random_sequences(len(starts), seed=seed)
    hooked, _ = capture(collate(sequences, starts))
    assert not capture.fused_output
    for row, (tokens, start) in enumerate(zip(sequences, starts, strict=True)):
        for name, expected in naive_projected(model, layers, projections, tokens, start).items():
            torch.testing.assert_close(hooked[name][row], expected, rtol=1e-9, atol=1e-11)


def test_a_forward_that_bypasses_its_output_layer_uses_its_own_logits():
    """Logits computed without calling the output layer module: the check captures no
    input, so the model's logits are used (and the gradients stay exact)."""
    model = tiny_llama()
    projections = small_projections(find_layers(model))
    capture = ProjectedGradients(model, projections)
    capture._head.layer = torch.nn.Linear(1, 1)  # a layer this model's forward never calls
    assert_model_logits_used(model, capture, projections, [1, 0], seed=5)


def test_fused_output_layer_refuses_what_it_cannot_do():
    layer = torch.nn.Linear(4, 10, dtype=torch.float64)
    head = OutputHead(layer)
    labels = torch.tensor([[1, 2, 3]])
    with head.capturing():
        layer(torch.randn(1, 3, 4, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="no weight gradient"):
        head.loss(labels)  # trainable weights would get no gradient
    layer.requires_grad_(False)
    hidden = torch.randn(1, 3, 4, dtype=torch.float64, requires_grad=True)
    with head.capturing():
        layer(hidden)
    loss = head.loss(labels).sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward"):
        loss.backward()  # the saved gradient was scaled in place


def test_logits_changed_after_the_output_layer_use_the_models_own():
    """A model that scales its logits after the layer (as soft-capping models do) fails the
    check against its own logits, and its gradients still equal the per-example loop."""
    model = tiny_llama()

    def scale_logits(_module, _inputs, output):
        output.logits = output.logits * 0.5
        return output

    model.register_forward_hook(scale_logits)
    projections = small_projections(find_layers(model))
    capture = ProjectedGradients(model, projections)
    assert_model_logits_used(model, capture, projections, [1, 0, 2], seed=3)


def test_padding_does_not_change_gradients():
    model = tiny_llama()
    capture = ProjectedGradients(model, small_projections(find_layers(model)))
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

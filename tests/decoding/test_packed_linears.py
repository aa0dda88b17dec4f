"""Packing the projections that share an input into one GEMM: same outputs, no second copy of any weight, an
idempotent second packing, a fallback where modules cannot be packed, and a model that still saves and loads."""

from __future__ import annotations

import torch
from torch import nn

from modeling_apriel_h1 import AprielH1ForCausalLM
from modeling_apriel_h1.engine.decoding import _packed_projections
from modeling_apriel_h1.engine.packed_linears import LinearGroup
from tests.modeling.tiny import tiny_config


def three_linears(bias: bool) -> list[nn.Linear]:
    torch.manual_seed(0)
    return [nn.Linear(24, width, bias=bias) for width in (32, 8, 8)]


def test_one_gemm_gives_each_linears_output_and_the_modules_are_unchanged():
    for bias in (False, True):
        linears = three_linears(bias)
        inputs = torch.randn(5, 24)
        before = [linear(inputs) for linear in linears]
        group = LinearGroup(linears)
        assert group.packed
        for got, expected in zip(group(inputs), before):
            torch.testing.assert_close(got, expected)
        for linear, expected in zip(linears, before):  # the modules read the packed rows now
            torch.testing.assert_close(linear(inputs), expected)


def test_weights_become_views_of_one_buffer_and_a_second_packing_reuses_it():
    linears = three_linears(bias=True)
    group = LinearGroup(linears)
    storage = group.weight.untyped_storage().data_ptr()
    assert all(linear.weight.untyped_storage().data_ptr() == storage for linear in linears)
    assert group.weight.shape == (48, 24)
    again = LinearGroup(linears)
    assert again.weight.data_ptr() == group.weight.data_ptr() and again.bias.data_ptr() == group.bias.data_ptr()
    assert all(linear.weight.untyped_storage().data_ptr() == storage for linear in linears)


def test_modules_that_cannot_share_a_gemm_run_one_by_one():
    linears = three_linears(bias=False)
    linears[1] = nn.Linear(24, 8, bias=True)  # one bias among none
    inputs = torch.randn(3, 24)
    group = LinearGroup(linears)
    assert not group.packed
    for got, linear in zip(group(inputs), linears):
        torch.testing.assert_close(got, linear(inputs))


def test_a_packed_model_saves_and_loads_with_the_same_logits(tmp_path):
    torch.manual_seed(0)
    model = AprielH1ForCausalLM(tiny_config()).eval()
    ids = torch.randint(3, 97, (2, 9))
    with torch.no_grad():
        before = model(ids).logits
        projections = _packed_projections(model)
        assert all(group.packed for pair in projections for group in pair)
        torch.testing.assert_close(model(ids).logits, before)
    model.save_pretrained(tmp_path)
    loaded = AprielH1ForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, before)


def test_packing_can_be_declined_and_then_leaves_every_parameter_as_it_was():
    linears = three_linears(bias=True)
    parameters = [linear.weight for linear in linears]
    inputs = torch.randn(4, 24)
    group = LinearGroup(linears, pack=False)
    assert not group.packed and all(linear.weight is before for linear, before in zip(linears, parameters))
    for got, linear in zip(group(inputs), linears):
        torch.testing.assert_close(got, linear(inputs))

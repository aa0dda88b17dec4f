"""Checked layer indices, and skipping one decoder layer for a forward pass.

Works on any transformers causal LM whose decoder keeps its blocks in ``model.model.layers`` (Mistral, Llama,
Qwen2 teachers and Apriel-H1 hybrids): the decoder calls each block with the hidden states first and uses the
tensor it returns, so a block that returns its input unchanged removes the layer from the computation.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from modeling_apriel_h1.layer_types import decoder_layers


def check_layer_indices(layers: Iterable[int] | None, num_layers: int, allowed: Iterable[int] | None = None) -> list[int]:
    """The requested layer indices (all of ``allowed``, or all layers, when None), sorted and validated."""
    allowed = list(range(num_layers)) if allowed is None else sorted(allowed)
    if layers is None:
        chosen = allowed
    else:
        chosen = sorted(set(int(index) for index in layers))
        out_of_range = [index for index in chosen if not 0 <= index < num_layers]
        if out_of_range:
            raise ValueError(
                f"layer indices {out_of_range} are out of range: the model has {num_layers} layers, "
                f"numbered 0 to {num_layers - 1}"
            )
        not_allowed = [index for index in chosen if index not in allowed]
        if not_allowed:
            raise ValueError(f"layers {not_allowed} cannot be ranked here; the candidates are {allowed}")
    if not chosen:
        raise ValueError("there are no layers to rank: the model (or the --layers selection) has no candidate layer")
    return chosen


class SkippedLayer(nn.Module):
    """Stands in for a decoder block and returns the hidden states it is given (the identity function).

    Attribute reads it does not have itself (``attention_type``, ``layer_idx``, ...) go to the block it
    replaces, which it holds outside the module tree so that its parameters are not counted twice.
    """

    def __init__(self, layer: nn.Module):
        super().__init__()
        object.__setattr__(self, "skipped", layer)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return hidden_states

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "skipped"), name)


@contextmanager
def skip_layer(model: nn.Module, index: int) -> Iterator[None]:
    """Within the block, layer ``index`` of ``model`` is the identity; the block is put back on any exit."""
    layers = decoder_layers(model)
    check_layer_indices([index], len(layers))
    original = layers[index]
    layers[index] = SkippedLayer(original)
    try:
        yield
    finally:
        layers[index] = original

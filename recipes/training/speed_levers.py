"""Options that make a distillation step faster or smaller without changing what it computes.

Each is a key of the stage config (``recipes/configs/distill_tiny.yaml``) and a flag of
``benchmarks/distill_throughput.py``, which measures what each one gains. Two act on decoder layers:

* :func:`checkpoint_first_layers` recomputes the activations of only the first ``count`` decoder layers in the
  backward pass. Full checkpointing costs about a third more compute (each layer's forward runs twice);
  checkpointing just enough layers for the step to fit memory costs only that share of it.
* :func:`compile_decoder_layers` compiles each decoder layer of a model with ``torch.compile`` (regional
  compilation: identical layers share one compiled graph, so compile time does not grow with depth); the recipe
  does it for the student and the teacher. Norms, rotary embedding, SwiGLU and the residual adds fuse into a few
  kernels. The Mamba mixer is left out of the compiled regions: it calls its own Triton / mamba-ssm kernels,
  which are fused already.

The third, running the teacher under ``torch.inference_mode``, is an argument of
:class:`recipes.training.distillation.DistillationTrainer`.
"""

from __future__ import annotations

from torch import nn
from transformers import PreTrainedModel

from modeling_apriel_h1.layer_types import decoder_layers, is_mamba_layer
from modeling_apriel_h1.transformers_compat import enable_activation_checkpointing


def checkpoint_first_layers(model: PreTrainedModel, count: int | None) -> list[int]:
    """Turn on activation checkpointing (non-reentrant) for the first ``count`` decoder layers, all when None.

    Returns the indices of the checkpointed layers. Uses transformers' own checkpointing switch and then turns
    it off again on the layers past ``count``: each ``GradientCheckpointingLayer`` decides by its own flag.
    """
    layers = decoder_layers(model)
    if count is not None and not 0 <= count <= len(layers):
        raise ValueError(
            f"gradient_checkpointing_layers is {count}, but the student has {len(layers)} decoder layers; "
            f"use a number from 0 to {len(layers)}, or null for all of them."
        )
    enable_activation_checkpointing(model, {"use_reentrant": False})
    for layer in layers[count:] if count is not None else ():
        layer.gradient_checkpointing = False
    return [index for index, layer in enumerate(layers) if layer.gradient_checkpointing]


def _compiled_regions(layer: nn.Module) -> list[nn.Module]:
    """What of one decoder layer to compile: the whole layer when it has no Mamba mixer, else its norms and MLP."""
    if is_mamba_layer(layer):
        return [module for name, module in layer.named_children() if name != "mixer"]
    return [layer]


def compile_decoder_layers(model: PreTrainedModel, backend: str = "inductor") -> int:
    """Compile a model's decoder layers in place (``nn.Module.compile``); returns how many modules were
    compiled. ``backend`` is ``torch.compile``'s (tests use ``aot_eager``, which checks tracing without a
    compiler toolchain)."""
    regions = [region for layer in decoder_layers(model) for region in _compiled_regions(layer)]
    for region in regions:
        region.compile(backend=backend, dynamic=False)
    return len(regions)

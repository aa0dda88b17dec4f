"""Random initialisation of chosen Mamba mixers of a converted hybrid: the control arm of the MIL ablation.

MIL initialisation (``conversion.mil``) copies the replaced attention's projections into the new mixer. To
measure what that buys, the same student is also distilled with those mixers drawn from the model's own
initialisation instead (normal-initialised projections, Mamba's S4D-real A, unit D, log-uniform time steps:
``AprielH1PreTrainedModel._init_mamba``). Everything else keeps the converted (teacher) weights.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from conversion.atomic_io import staged_output_dir
from conversion.record import read_record, write_record
from modeling_apriel_h1 import AprielH1ForCausalLM

RANDOM_INIT_METHOD = "random (AprielH1 default init of the new mixers)"


def randomise_mixers(directory: str | Path, layers: list[int], seed: int) -> None:
    """Redraw the ``mixer.*`` weights of ``layers`` in the converted hybrid at ``directory``, in place."""
    directory = Path(directory)
    converted = AprielH1ForCausalLM.from_pretrained(directory)
    mamba = set(converted.config.mamba_layer_indices)
    if not set(layers) <= mamba:
        raise ValueError(f"layers {sorted(set(layers) - mamba)} of {directory} are not Mamba layers")
    torch.manual_seed(seed)
    fresh = AprielH1ForCausalLM(converted.config)
    with torch.no_grad():
        for layer in layers:
            target, source = converted.model.layers[layer].mixer, fresh.model.layers[layer].mixer
            for name, tensor in source.state_dict().items():
                target.state_dict()[name].copy_(tensor)
    record = dataclasses.replace(read_record(directory), init_method=RANDOM_INIT_METHOD)
    with staged_output_dir(directory, overwrite=True) as staging:
        for path in directory.iterdir():  # tokenizer and other files beside the weights
            if path.is_file() and not path.name.endswith(".safetensors") and path.name != "model.safetensors.index.json":
                (staging / path.name).write_bytes(path.read_bytes())
        converted.save_pretrained(staging)
        write_record(staging, record)

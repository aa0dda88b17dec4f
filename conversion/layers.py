"""Choosing the layers to replace: explicit lists, or the K least important layers of a ranking."""

from __future__ import annotations

from transformers import PretrainedConfig

from modeling_apriel_h1.layer_types import mamba_layers_of

from .importance_file import ImportanceRanking


def check_layers_to_replace(config: PretrainedConfig, layers: list[int]) -> None:
    """Reject a list of layers that cannot be replaced, naming the problem and the fix."""
    num_layers = config.num_hidden_layers
    for index in layers:
        if isinstance(index, bool) or not isinstance(index, int):
            raise ValueError(f"layer index {index!r} is not an integer; give layer indices as integers")
        if not 0 <= index < num_layers:
            raise ValueError(
                f"layer {index} is out of range: the teacher has {num_layers} layers, so indices go from 0 to "
                f"{num_layers - 1}"
            )
    duplicates = sorted({index for index in layers if layers.count(index) > 1})
    if duplicates:
        raise ValueError(f"layers {duplicates} are listed more than once; list each layer to replace once")
    already = sorted(set(layers) & set(mamba_layers_of(config)))
    if already:
        raise ValueError(
            f"layers {already} are already Mamba in the teacher; replace only attention layers (the teacher's "
            f"Mamba layers are {mamba_layers_of(config)} and are kept as they are)"
        )
    if len(set(layers) | set(mamba_layers_of(config))) >= num_layers:
        raise ValueError(
            f"replacing layers {sorted(layers)} would leave no attention layer; the model needs at least one, so "
            "keep at least one layer as attention"
        )


def least_important_layers(config: PretrainedConfig, ranking: ImportanceRanking, total_mamba: int) -> list[int]:
    """The layers to replace so that the student has ``total_mamba`` Mamba layers in all.

    For an AprielH1 teacher the existing Mamba layers count towards the total (the staged schedule goes
    25 -> 27 -> 30 ... Mamba layers), and the new ones are the least important attention layers of the ranking.
    """
    existing = mamba_layers_of(config)
    needed = total_mamba - len(existing)
    if needed < 0:
        raise ValueError(
            f"--num-mamba-layers is {total_mamba} but the teacher already has {len(existing)} Mamba layers; "
            f"the number is the total in the student, so give at least {len(existing)}"
        )
    out_of_range = [index for index in ranking.ranking if not 0 <= index < config.num_hidden_layers]
    if out_of_range:
        raise ValueError(
            f"the importance ranking names layers {out_of_range}, which the teacher ({config.num_hidden_layers} "
            "layers) does not have; was the ranking computed for another model?"
        )
    candidates = [index for index in ranking.ranking if index not in existing]
    if needed > len(candidates):
        raise ValueError(
            f"need {needed} more Mamba layers but the ranking has only {len(candidates)} attention layers to "
            "choose from; lower --num-mamba-layers or rank more layers"
        )
    return sorted(candidates[:needed])

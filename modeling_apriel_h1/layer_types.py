"""The names of the two layer kinds, in every format this project reads or writes, and which layers are Mamba.

One layer kind, four spellings:

=============  =====================  ==================================  ========================
kind           what users write       stored in ``layer_types``           released / Fast-LLM
=============  =====================  ==================================  ========================
attention      ``"attention"``        ``"full_attention"``                ``"t"`` / ``"full_attention"``
Mamba          ``"mamba"``            ``"linear_attention"``              ``"m2"`` / ``"mamba2"``
=============  =====================  ==================================  ========================

The stored names are transformers' cache-layer conventions, so that ``DynamicCache(config=...)`` builds a KV
layer for attention and a state layer for Mamba by itself. The released Apriel-H1 checkpoints write
``hybrid_block_layout`` (``"t"``/``"m2"``); Fast-LLM's export also writes ``layer_types`` for vLLM
(``"full_attention"``/``"mamba2"``). Everything else in the project asks this module, and it ships beside the
configuration as remote code.
"""

from __future__ import annotations

from torch import nn

ATTENTION = "full_attention"
MAMBA = "linear_attention"
# What users may write in ``layer_types`` -> the stored name
USER_NAMES = {"attention": ATTENTION, ATTENTION: ATTENTION, "mamba": MAMBA, MAMBA: MAMBA}
# hybrid_block_layout entries this model has; the release also knows "i" (identity) and Fast-LLM "m2d", "gdn", ...
RELEASED_LAYOUT = {"t": ATTENTION, "m2": MAMBA}
# The names Fast-LLM's AprielHybridSSMConfig writes into ``layer_types`` for those entries (one per entry, for vLLM)
FAST_LLM_LAYER_TYPES = {"t": "full_attention", "m2": "mamba2"}
_RELEASED_ENTRY = {kind: entry for entry, kind in RELEASED_LAYOUT.items()}
# The model types whose ``layer_types`` use the names above: ours and the released checkpoints'
HYBRID_MODEL_TYPES = ("apriel_h1", "apriel_h")


def stored_layer_type(index: int, kind: str) -> str:
    """The stored name of layer ``index``'s ``kind`` (either spelling), or a ValueError naming the ones that exist."""
    if kind not in USER_NAMES:
        raise ValueError(
            f"layer_types[{index}] is {kind!r}, which is not a layer type; use 'attention' or 'mamba' "
            f"(or transformers' names {ATTENTION!r} / {MAMBA!r})"
        )
    return USER_NAMES[kind]


def is_mamba(kind: str) -> bool:
    """Whether a ``layer_types`` entry (either spelling) is a Mamba layer."""
    return USER_NAMES.get(kind) == MAMBA


def user_name(kind: str) -> str:
    """``"attention"`` or ``"mamba"`` for a ``layer_types`` entry (either spelling): Fast-LLM's block names too."""
    return "mamba" if is_mamba(kind) else "attention"


def mamba_layers_in(layer_types: list[str] | None) -> list[int]:
    """Indices of the Mamba layers in a ``layer_types`` list, whichever of our spellings it uses; None, a
    transformer's missing list, has none (and so does a transformer's own list, whose names are not ours)."""
    return [index for index, kind in enumerate(layer_types or ()) if is_mamba(kind)]


def mamba_layers_of(config) -> list[int]:
    """The Mamba layers of any model's config: a hybrid's (ours or a released one), none for a transformer, whose
    ``layer_types`` speak of other things (Qwen3-Next's ``"linear_attention"`` is not our Mamba mixer)."""
    return mamba_layers_in(config.layer_types) if getattr(config, "model_type", None) in HYBRID_MODEL_TYPES else []


def released_layout(layer_types: list[str]) -> list[str]:
    """The released ``hybrid_block_layout`` (``"t"``/``"m2"``) of a stored ``layer_types`` list."""
    return [_RELEASED_ENTRY[kind] for kind in layer_types]


def layer_types_from_released(layout: list[str]) -> list[str]:
    """The stored ``layer_types`` of a released ``hybrid_block_layout`` (entries checked by the caller)."""
    return [RELEASED_LAYOUT[entry] for entry in layout]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """``model.model.layers``: the decoder blocks of a causal LM laid out like Mistral/Llama/Qwen2 (every teacher
    and hybrid here), or a ValueError naming what the model has instead."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(
            f"{type(model).__name__} has no decoder blocks at model.model.layers; this works on causal LMs laid "
            "out like Mistral/Llama/Qwen2 (ForCausalLM -> model -> layers)"
        )
    return layers


def is_mamba_layer(layer: nn.Module) -> bool:
    """Whether a built decoder block is an Apriel-H1 Mamba layer (a transformer's blocks never are)."""
    return getattr(layer, "is_mamba", False)

"""Reading a Fast-LLM ``decoder`` config back into our ``layer_types`` and ``mamba_*`` fields: the inverse of
``conversion.fast_llm.fast_llm_decoder_from_config``, which the tests use to check that what we write is complete.

It follows Fast-LLM's ``AprielMambaConverter``: ``add_linear_biases`` -> ``mamba_proj_bias``; the conv and dt
biases fall back to it when unset; per-layer bias overrides that differ from it are refused (we have one flag).
"""

from __future__ import annotations

from typing import Any

from modeling_apriel_h1.layer_types import ATTENTION, MAMBA

FAST_LLM_MAMBA_TYPES = ("mamba", "mamba_2")  # "mamba_2" is the deprecated name Fast-LLM still accepts


def layer_types_from_fast_llm_decoder(decoder: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """Our ``layer_types`` and ``mamba_*`` config fields for a Fast-LLM ``decoder`` config.

    The pattern repeats over ``num_blocks`` as in Fast-LLM (block i is ``pattern[i % len(pattern)]``). All Mamba
    blocks must share one mixer config, since AprielH1Config has one set of Mamba fields.
    """
    kind = decoder.get("type", "fixed")
    if kind == "fixed":
        names, blocks = ["block"], {"block": decoder.get("block", {})}
    elif kind == "pattern":
        names, blocks = decoder.get("pattern") or [], decoder.get("blocks") or {}
        if not names or not blocks:
            raise ValueError("a pattern decoder needs both 'blocks' and a non-empty 'pattern'")
        undefined = sorted(set(names) - set(blocks))
        if undefined:
            raise ValueError(f"pattern names blocks {undefined} that 'blocks' does not define")
    else:
        raise ValueError(f"decoder type {kind!r} is not supported; use 'fixed' or 'pattern'")
    num_blocks = decoder.get("num_blocks")
    if not isinstance(num_blocks, int) or num_blocks < 1:
        raise ValueError(f"decoder num_blocks is {num_blocks!r}; give the number of layers")
    layer_types, mamba_fields = [], None
    for index in range(num_blocks):
        mixer = blocks[names[index % len(names)]].get("mixer", {})
        mixer_type = mixer.get("type", "attention")  # Fast-LLM's default mixer is attention
        if mixer_type == "attention":
            layer_types.append(ATTENTION)
        elif mixer_type in FAST_LLM_MAMBA_TYPES:
            fields = _mamba_fields_from_mixer(mixer)
            if mamba_fields is not None and fields != mamba_fields:
                raise ValueError("the Mamba blocks have different mixer configs; AprielH1 has one Mamba config for all layers")
            mamba_fields = fields
            layer_types.append(MAMBA)
        else:
            raise ValueError(
                f"block {index} has mixer type {mixer_type!r}; only 'attention' and 'mamba' (or its old name "
                "'mamba_2') map to Apriel-H1 layers"
            )
    return layer_types, mamba_fields or {}


def _mamba_fields_from_mixer(mixer: dict[str, Any]) -> dict[str, Any]:
    missing = [key for key in ("d_inner", "d_xb", "dt_rank") if mixer.get(key) is None]
    if missing:
        raise ValueError(f"Mamba mixer config lacks {missing}; Fast-LLM's defaults for these changed between versions, so give them explicitly")
    if not mixer.get("repeat_kv_before_conv", True):
        raise ValueError("repeat_kv_before_conv is False; only True (the released Apriel-H1 setting) is supported")
    biases = mixer.get("add_linear_biases", True)  # Fast-LLM's default
    for layer in ("z_layer", "x_layer", "b_layer", "c_layer", "dt_input_layer", "output_layer"):
        enabled = mixer.get(layer, {}).get("bias", {}).get("enabled")
        if enabled not in (None, biases):
            raise ValueError(f"{layer}.bias.enabled={enabled} differs from add_linear_biases={biases}; AprielH1 has one flag for the z/x/B/C, dt input and output biases")
    conv = mixer.get("convolution_layer", {})
    conv_bias = conv.get("bias", {}).get("enabled")
    dt_bias = mixer.get("dt_layer", {}).get("bias", {}).get("enabled")
    return {
        "mamba_d_state": mixer.get("state_size", 16),
        "mamba_d_inner": mixer["d_inner"],
        "mamba_d_xb": mixer["d_xb"],
        "mamba_dt_rank": mixer["dt_rank"],
        "mamba_d_conv": conv.get("kernel_size", 4),
        "mamba_proj_bias": biases,
        "mamba_conv_bias": biases if conv_bias is None else conv_bias,
        "mamba_dt_proj_bias": biases if dt_bias is None else dt_bias,
    }

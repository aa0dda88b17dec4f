"""Interop with Fast-LLM, which trained the released Apriel-H1 models: configs and weights, both directions.

Two config shapes describe the same hybrids:

- the released Hugging Face checkpoints (``model_type: apriel_ssm_thinker_hybrid``): Mistral fields plus
  ``hybrid_block_layout`` ("t" = attention, "m2" = the Apriel-H1 Mamba mixer) and ``ssm_cfg``;
- Fast-LLM's own block config: ``decoder: {type: pattern, blocks: {name: {mixer: {type: attention | mamba}}},
  pattern: [name, ...], num_blocks}`` (``mamba_2`` is Fast-LLM's older, deprecated name for ``mamba``).

Weight names are ours already. The one numeric difference: Fast-LLM's mixer adds ``dt_proj.bias`` twice
(inside ``dt_proj`` and again as the scan's ``delta_bias``), ours once, so importing doubles it and exporting
halves it (exact in floating point). docs/fast_llm_interop.md lists every field.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from transformers import MistralConfig

from modeling_apriel_h1 import AprielH1Config
from modeling_apriel_h1.configuration_apriel_h1 import ATTENTION, MAMBA

from .checkpoint import write_config_and_code
from .atomic_io import staged_output_dir
from .plan import PlannedTensor
from .safetensors_io import INDEX_FILE, SINGLE_FILE, CheckpointReader, write_safetensors

RELEASED_MODEL_TYPE = "apriel_ssm_thinker_hybrid"
RELEASED_ARCHITECTURE = "AprielThinkerSSMHybridForCausalLM"
RELEASED_AUTO_MAP = {
    "AutoConfig": "configuration_ssm_hybrid_apriel15b.AprielSSMHybridConfig",
    "AutoModel": "modeling_ssm_hybrid_apriel15b.AprielThinkerSSMHybridModel",
    "AutoModelForCausalLM": "modeling_ssm_hybrid_apriel15b.AprielThinkerSSMHybridForCausalLM",
}
LAYOUT_NAMES = {"t": ATTENTION, "m2": MAMBA}
FAST_LLM_DT_BIAS_FACTOR = 2.0  # Fast-LLM's dt_proj.bias counts twice; ours once

_MISTRAL_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "initializer_range",
    "rms_norm_eps", "use_cache", "pad_token_id", "bos_token_id", "eos_token_id", "tie_word_embeddings",
    "rope_parameters", "sliding_window", "attention_dropout",
)
# ssm_cfg key -> (AprielH1Config field, value when the key is absent; None = derived below)
_SSM_FIELDS = {
    "d_state": ("mamba_d_state", 16),
    "d_inner": ("mamba_d_inner", None),
    "d_xb": ("mamba_d_xb", None),
    "dt_rank": ("mamba_dt_rank", "auto"),
    "d_conv": ("mamba_d_conv", 4),
    "conv_bias": ("mamba_conv_bias", True),
    "bias": ("mamba_proj_bias", False),
    "dt_proj_bias": ("mamba_dt_proj_bias", True),
    "dt_min": ("mamba_dt_min", 0.001),
    "dt_max": ("mamba_dt_max", 0.1),
    "dt_init_floor": ("mamba_dt_init_floor", 1e-4),
    "dt_scale": ("mamba_dt_scale", 1.0),
}


# ----- released Hugging Face format (hybrid_block_layout + ssm_cfg) -------------------------------------------


def config_from_released(released: dict[str, Any]) -> AprielH1Config:
    """Our config for a released Apriel-H1 ``config.json`` (already parsed)."""
    mistral = MistralConfig(**{k: v for k, v in released.items() if k not in ("hybrid_block_layout", "ssm_cfg", "model_type", "architectures", "auto_map")})
    fields = {name: getattr(mistral, name) for name in _MISTRAL_FIELDS}
    layout = released.get("hybrid_block_layout")
    if not layout:
        raise ValueError("config has no hybrid_block_layout; is this a released Apriel-H1 (apriel_ssm_thinker_hybrid) config?")
    if len(layout) == 1:  # Fast-LLM writes a single entry when every block is the same
        layout = layout * fields["num_hidden_layers"]
    unknown = sorted({kind for kind in layout if kind not in LAYOUT_NAMES})
    if unknown:
        raise ValueError(
            f"hybrid_block_layout uses block types {unknown}; only 't' (attention) and 'm2' (the Apriel-H1 Mamba "
            "mixer) can be converted ('m2d' discrete Mamba-2, 'i' identity and others have no counterpart here)"
        )
    if len(layout) != fields["num_hidden_layers"]:
        raise ValueError(f"hybrid_block_layout has {len(layout)} entries but num_hidden_layers is {fields['num_hidden_layers']}")
    ssm = dict(released.get("ssm_cfg") or {})
    if not ssm.get("repeat_kv_before_conv", True):
        raise ValueError(
            "ssm_cfg.repeat_kv_before_conv is False (convolution at the KV width, before the repeat); only True is "
            "supported, the setting of the released Apriel-H1 models"
        )
    mamba = {}
    for key, (name, default) in _SSM_FIELDS.items():
        value = ssm.get(key, default)
        mamba[name] = default if value is None else value
    hidden = fields["hidden_size"]
    mamba["mamba_d_inner"] = mamba["mamba_d_inner"] or hidden * ssm.get("expand", 1)
    mamba["mamba_d_xb"] = mamba["mamba_d_xb"] or hidden  # Fast-LLM's Mamba2: d_xb None means d_model
    if mamba["mamba_dt_rank"] == "auto":
        mamba["mamba_dt_rank"] = math.ceil(hidden / 16)
    return AprielH1Config(**fields, **mamba, layer_types=[LAYOUT_NAMES[kind] for kind in layout])


def released_config_from(config: AprielH1Config) -> dict[str, Any]:
    """A released-format ``config.json`` (as a dict) for our config; the inverse of ``config_from_released``."""
    if config.attention_bias or config.attention_out_bias:
        raise ValueError(
            "the released Apriel-H1 format has bias-free attention (MistralDecoderLayer); this model has attention "
            "biases, which that format cannot hold"
        )
    fields = {name: getattr(config, name) for name in _MISTRAL_FIELDS if name != "rope_parameters"}
    rope = dict(config.rope_parameters or {"rope_type": "default", "rope_theta": 10000.0})
    fields["rope_theta"] = rope.pop("rope_theta")
    fields["rope_scaling"] = rope
    ssm = {key: getattr(config, name) for key, (name, _) in _SSM_FIELDS.items()}
    ssm.update(repeat_kv_before_conv=True, activation="silu", dt_init="random")
    to_layout = {kind: short for short, kind in LAYOUT_NAMES.items()}
    return {
        "model_type": RELEASED_MODEL_TYPE,
        "architectures": [RELEASED_ARCHITECTURE],
        "auto_map": dict(RELEASED_AUTO_MAP),
        **fields,
        "ssm_cfg": ssm,
        "hybrid_block_layout": [to_layout[kind] for kind in config.layer_types],
    }


# ----- weights ---------------------------------------------------------------------------------------------


def weight_from_fast_llm(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """A released checkpoint tensor as our model expects it (only dt_proj.bias changes)."""
    return tensor * FAST_LLM_DT_BIAS_FACTOR if name.endswith(".mixer.dt_proj.bias") else tensor


def weight_to_fast_llm(name: str, tensor: torch.Tensor) -> torch.Tensor:
    return tensor / FAST_LLM_DT_BIAS_FACTOR if name.endswith(".mixer.dt_proj.bias") else tensor


def import_released_checkpoint(source: str | Path, output: str | Path, overwrite: bool = False) -> AprielH1Config:
    """Convert a released Apriel-H1 checkpoint directory into ours (loads with ``AutoModelForCausalLM``),
    shard by shard, one tensor at a time. Tokenizer files are the caller's to copy."""
    source = Path(source)
    config = config_from_released(json.loads((source / "config.json").read_text()))
    _rewrite_weights(source, output, weight_from_fast_llm, overwrite, write_config=lambda d: write_config_and_code(d, config))
    return config


def export_released_checkpoint(source: str | Path, output: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Convert one of our checkpoint directories into the released Fast-LLM format (config and weights)."""
    source = Path(source)
    released = released_config_from(AprielH1Config.from_pretrained(source))
    _rewrite_weights(
        source, output, weight_to_fast_llm, overwrite,
        write_config=lambda d: (d / "config.json").write_text(json.dumps(released, indent=2) + "\n"),
    )
    return released


def _rewrite_weights(source: Path, output: str | Path, convert, overwrite: bool, write_config) -> None:
    reader = CheckpointReader(source)
    with staged_output_dir(output, overwrite=overwrite) as staging:
        weight_map, total = {}, 0
        for file in reader.files:
            names = reader.names_by_file[file]
            entries = [
                PlannedTensor(name, *reader.layout(name), lambda name=name: convert(name, reader.read(name)))
                for name in names
            ]
            target = SINGLE_FILE if len(reader.files) == 1 else file
            total += write_safetensors(staging / target, entries)
            weight_map.update({name: target for name in names})
        if len(reader.files) > 1:
            index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
            (staging / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        write_config(staging)


# ----- Fast-LLM block-pattern config ---------------------------------------------------------------------------

FAST_LLM_MAMBA_TYPES = ("mamba", "mamba_2")  # "mamba_2" is the deprecated name Fast-LLM still accepts


def fast_llm_mamba_mixer(config: AprielH1Config) -> dict[str, Any]:
    """Fast-LLM's ``mixer`` block config for our Mamba layers (architecture fields; init fields omitted)."""
    return {
        "type": "mamba",
        "state_size": config.mamba_d_state,
        "d_inner": config.mamba_d_inner,
        "d_xb": config.mamba_d_xb,
        "dt_rank": config.mamba_dt_rank,
        "add_linear_biases": config.mamba_proj_bias,
        "convolution_layer": {"kernel_size": config.mamba_d_conv, "bias": {"enabled": config.mamba_conv_bias}},
        "dt_layer": {"bias": {"enabled": config.mamba_dt_proj_bias}},
        "repeat_kv_before_conv": True,
    }


def fast_llm_decoder_from_config(config: AprielH1Config) -> dict[str, Any]:
    """Fast-LLM's ``decoder`` config with our layer pattern: one "attention" and one "mamba" block."""
    names = {ATTENTION: "attention", MAMBA: "mamba"}
    blocks = {"attention": {"mixer": {"type": "attention"}}}
    if MAMBA in config.layer_types:
        blocks["mamba"] = {"mixer": fast_llm_mamba_mixer(config)}
    return {
        "type": "pattern",
        "blocks": blocks,
        "pattern": [names[kind] for kind in config.layer_types],
        "num_blocks": config.num_hidden_layers,
    }


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

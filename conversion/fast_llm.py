"""Interop with the released Apriel-H1 checkpoints and with Fast-LLM, which trained them: configs and weights.

The released checkpoints (``model_type: apriel_h``: Mistral fields plus ``hybrid_block_layout`` and ``ssm_cfg``)
load as they are once ``modeling_apriel_h1`` is imported (``AprielHConfig``); nothing here is needed for that.
This module converts directories:

- ``export_released_checkpoint``: one of ours -> the released layout, with our modeling code under the names
  its ``auto_map`` gives, so the result loads with ``from_pretrained`` here and with ``trust_remote_code=True``
  where the package is not installed;
- ``import_released_checkpoint``: a released or Fast-LLM-exported directory -> the same layout with our code.
  Fast-LLM's current export adds keys for other mixers (``layer_types``, ``linear_attn_config``, ``gdn_cfg``)
  and may write one layout entry per pattern element; both are handled here, and every tensor is checked
  against the config before anything is written.

The one numeric difference between the layouts: the released mixer adds ``dt_proj.bias`` twice (inside
``dt_proj`` and again as the scan's ``delta_bias``), ours once. Released-layout configs say so
(``mamba_dt_bias_in_projection``), so their weights are never changed; exporting one of ours halves the bias
(exact in floating point). Fast-LLM's block-pattern config maps to and from ours at the end of the module.
docs/fast_llm_interop.md lists every field and the upstream files it follows.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig

from modeling_apriel_h1 import AprielH1Config, AprielH1ForCausalLM, AprielHConfig
from modeling_apriel_h1.configuration_apriel_h1 import RELEASED_SSM_FIELDS
from modeling_apriel_h1.layer_types import MAMBA, released_layout, user_name

from .atomic_io import staged_output_dir
from .checkpoint import TEACHER_FILES_TO_COPY, write_config_and_code
from .plan import PlannedTensor
from .safetensors_io import INDEX_FILE, SINGLE_FILE, CheckpointReader, write_safetensors

# model_types of configs in the released layout: the release, Fast-LLM's older and current Apriel exports
RELEASED_LAYOUT_MODEL_TYPES = ("apriel_h", "apriel_ssm_thinker_hybrid", "apriel_hybrid_ssm")
# Keys of a source config that name its code or format, not the model; replaced by ours on import
_SOURCE_IDENTITY_KEYS = ("model_type", "architectures", "auto_map", "transformers_version", "_name_or_path")


# ----- configs ---------------------------------------------------------------------------------------------------


def config_from_released(released: dict[str, Any]) -> AprielHConfig:
    """``AprielHConfig`` for a released or Fast-LLM-exported ``config.json`` (already parsed).

    Fast-LLM's exporter writes one ``hybrid_block_layout`` entry per element of its block pattern and
    ``num_hidden_layers`` blocks; Fast-LLM's importer repeats the pattern over the blocks, and so does this.
    ``AprielHConfig`` itself drops the keys of other mixers and checks ``layer_types`` against the layout.
    """
    fields = {key: value for key, value in released.items() if key not in _SOURCE_IDENTITY_KEYS}
    model_type = released.get("model_type")
    if model_type not in RELEASED_LAYOUT_MODEL_TYPES:
        raise ValueError(
            f"config model_type is {model_type!r}, not a released Apriel-H1 layout {RELEASED_LAYOUT_MODEL_TYPES}; "
            "for one of our checkpoints use export_released_checkpoint"
        )
    layout, layers = fields.get("hybrid_block_layout") or [], fields.get("num_hidden_layers")
    if layout and isinstance(layers, int) and len(layout) < layers and layers % len(layout) == 0:
        repeats = layers // len(layout)
        fields["hybrid_block_layout"] = list(layout) * repeats
        if fields.get("layer_types") is not None and len(fields["layer_types"]) == len(layout):
            fields["layer_types"] = list(fields["layer_types"]) * repeats
    return AprielHConfig(**fields)


def released_config_from(config: AprielH1Config) -> AprielHConfig:
    """The released-layout config of one of our models (the inverse of reading a released one)."""
    if isinstance(config, AprielHConfig):
        return AprielHConfig(**{key: value for key, value in config.to_dict().items() if key not in _SOURCE_IDENTITY_KEYS})
    if config.attention_bias or config.attention_out_bias:
        raise ValueError(
            "the released Apriel-H1 format has bias-free attention (MistralDecoderLayer); this model has attention "
            "biases, which that format cannot hold"
        )
    _refuse_attention_beyond_mistral(config, "the released Apriel-H1 format (MistralDecoderLayer)")
    ours = ("layer_types", "attention_bias", "attention_out_bias", "attention_qk_norm", "mamba_dt_bias_in_projection",
            *RELEASED_SSM_FIELDS.values())
    fields = {key: value for key, value in config.to_dict().items() if key not in ours and key not in _SOURCE_IDENTITY_KEYS}
    ssm = {key: getattr(config, name) for key, name in RELEASED_SSM_FIELDS.items()}
    ssm.update(repeat_kv_before_conv=True, activation="silu")  # what the mixer computes (the release hard-codes SiLU)
    return AprielHConfig(**fields, hybrid_block_layout=released_layout(config.layer_types), ssm_cfg=ssm)


def _refuse_attention_beyond_mistral(config: AprielH1Config, target: str) -> None:
    """Raise, naming the feature, when the attention has q/k norms (Qwen3) or rotates part of each head (Phi-4-mini):
    Mistral attention, all that ``target`` holds, has neither, so the export would compute another model."""
    if config.attention_qk_norm:
        raise ValueError(f"this model's attention has per-head q/k norms (a Qwen3 teacher); {target} cannot hold them")
    if config.rotary_dim != config.head_dim:
        raise ValueError(
            f"this model's rotary embedding turns {config.rotary_dim} of {config.head_dim} head dimensions "
            f"(partial_rotary_factor, a Phi-4-mini teacher); {target} rotates whole heads"
        )


def tensor_mismatches(reader: CheckpointReader, config: AprielH1Config) -> list[str]:
    """What differs between the checkpoint's tensors (names and shapes, from the headers) and the model that
    ``config`` builds: missing, unexpected and wrongly shaped tensors, one line each; empty when they match."""
    with torch.device("meta"):
        expected = {name: tuple(tensor.shape) for name, tensor in AprielH1ForCausalLM(config).state_dict().items()}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight")
    found = {name: reader.layout(name)[0] for name in reader.names}
    lines = [f"missing {name} {expected[name]}" for name in sorted(expected.keys() - found.keys())]
    lines += [f"unexpected {name} {found[name]}" for name in sorted(found.keys() - expected.keys())]
    lines += [
        f"{name} has shape {found[name]}, the config needs {expected[name]}"
        for name in sorted(expected.keys() & found.keys()) if found[name] != expected[name]
    ]
    return lines


# ----- checkpoint directories ------------------------------------------------------------------------------------


def import_released_checkpoint(source: str | Path, output: str | Path, overwrite: bool = False) -> AprielHConfig:
    """A released or Fast-LLM-exported checkpoint directory -> ``output`` in the released layout with our code
    (loads with ``AutoModelForCausalLM``, also as remote code). Weights are copied as they are, after every
    tensor is checked against the config; tokenizer and generation files are copied when present."""
    source = Path(source)
    config = config_from_released(json.loads((source / "config.json").read_text()))
    reader = CheckpointReader(source)
    _refuse_mismatches(reader, config, source)
    with staged_output_dir(output, overwrite=overwrite) as staging:
        for file in reader.files:
            shutil.copy2(source / file, staging / file)
        if (source / INDEX_FILE).is_file():
            shutil.copy2(source / INDEX_FILE, staging / INDEX_FILE)
        _write_config_code_and_usage_files(staging, config, source)
    return config


def export_released_checkpoint(source: str | Path, output: str | Path, overwrite: bool = False) -> AprielHConfig:
    """One of our checkpoint directories -> ``output`` in the released layout (``model_type: apriel_h``), with our
    modeling code under the names its ``auto_map`` gives. ``dt_proj.bias`` is halved when ours counts it once."""
    source = Path(source)
    config = AutoConfig.from_pretrained(source)
    if not isinstance(config, AprielH1Config):
        raise ValueError(f"{source} holds a {config.model_type!r} model, not an Apriel-H1 one (apriel_h1 or apriel_h)")
    released = released_config_from(config)
    reader = CheckpointReader(source)
    _refuse_mismatches(reader, config, source)
    halve = not config.mamba_dt_bias_in_projection

    def convert(name: str, tensor: torch.Tensor) -> torch.Tensor:
        return tensor / 2 if halve and name.endswith(".mixer.dt_proj.bias") else tensor

    with staged_output_dir(output, overwrite=overwrite) as staging:
        _rewrite_weights(reader, staging, convert)
        _write_config_code_and_usage_files(staging, released, source)
    return released


def _refuse_mismatches(reader: CheckpointReader, config: AprielH1Config, source: Path) -> None:
    mismatches = tensor_mismatches(reader, config)
    if mismatches:
        shown = "; ".join(mismatches[:5]) + (f"; and {len(mismatches) - 5} more" if len(mismatches) > 5 else "")
        raise ValueError(f"the tensors in {source} do not match its config.json: {shown}")


def _write_config_code_and_usage_files(directory: Path, config: AprielH1Config, source: Path) -> None:
    write_config_and_code(directory, config)
    for name in TEACHER_FILES_TO_COPY:
        if (source / name).is_file():
            shutil.copy2(source / name, directory / name)


def _rewrite_weights(reader: CheckpointReader, directory: Path, convert) -> None:
    """The checkpoint's shards again, same names and order, each tensor passed through ``convert``."""
    weight_map, total = {}, 0
    for file in reader.files:
        names = reader.names_by_file[file]
        entries = [
            PlannedTensor(name, *reader.layout(name), lambda name=name: convert(name, reader.read(name)))
            for name in names
        ]
        target = SINGLE_FILE if len(reader.files) == 1 else file
        total += write_safetensors(directory / target, entries)
        weight_map.update({name: target for name in names})
    if len(reader.files) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


# ----- Fast-LLM block-pattern config ---------------------------------------------------------------------------

# transformers' hidden_act -> Fast-LLM's ActivationType (fast_llm/functional/config.py, _ACTIVATION_HF_NAMES)
FAST_LLM_ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu", "relu": "relu", "relu2": "squared_relu", "sigmoid": "sigmoid"}


def fast_llm_mamba_mixer(config: AprielH1Config) -> dict[str, Any]:
    """Fast-LLM's ``mixer`` block config for our Mamba layers (architecture fields; init fields omitted).

    Fast-LLM's mixer counts ``dt_proj.bias`` twice, like the release: weights of a model whose config has
    ``mamba_dt_bias_in_projection=False`` need their dt bias halved on the way (``export_released_checkpoint``).
    """
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


def fast_llm_attention_mixer(config: AprielH1Config) -> dict[str, Any]:
    """Fast-LLM's ``mixer`` block config for our attention layers, as its Mistral/Llama converters map it
    (fast_llm/models/gpt/conversion/llama.py ``LlamaAttentionConverter``, mistral.py)."""
    _refuse_attention_beyond_mistral(config, "the exported Fast-LLM attention block (written as Mistral's)")
    rope = dict(config.rope_parameters or {"rope_type": "default", "rope_theta": 10000.0})
    if rope.get("rope_type", "default") != "default":
        raise ValueError(
            f"rope_type {rope['rope_type']!r}: write blocks.*.mixer.rotary by hand from Fast-LLM's rotary configs "
            "(fast_llm/layers/attention/rotary/config.py) and merge it into the exported decoder; only the default "
            "RoPE is exported"
        )
    mixer = {
        "type": "attention",
        "heads": config.num_attention_heads,
        "head_groups": config.num_key_value_heads,
        "head_size": config.head_dim,
        "add_linear_biases": config.attention_bias,  # Fast-LLM's default is True: always written
        "rotary": {"type": "default", "theta": rope["rope_theta"]},
        "dropout": config.attention_dropout,
    }
    if config.attention_out_bias != config.attention_bias:  # e.g. Qwen2: q/k/v biases, none on the output
        mixer["dense_layer"] = {"bias": {"enabled": config.attention_out_bias}}
    if config.sliding_window is not None:
        mixer["window_size"] = config.sliding_window
    return mixer


def fast_llm_decoder_from_config(config: AprielH1Config) -> dict[str, Any]:
    """Fast-LLM's ``decoder`` config with our layer pattern, complete blocks: one "attention" and one "mamba"
    block, each with its mixer, the gated MLP and the RMS norms (Fast-LLM's defaults for anything left out,
    e.g. 8 heads with attention biases, would silently build another model). Model-level fields (hidden size,
    vocabulary, final norm, tied embeddings) live outside the decoder in Fast-LLM and are not written here.
    """
    if config.hidden_act not in FAST_LLM_ACTIVATIONS:
        raise ValueError(
            f"hidden_act {config.hidden_act!r} has no Fast-LLM activation ({sorted(FAST_LLM_ACTIVATIONS)}); set "
            "blocks.*.mlp.activation by hand after checking Fast-LLM's fast_llm/functional/config.py"
        )
    mlp = {
        "type": "mlp",
        "intermediate_size": config.intermediate_size,
        "gated": True,
        "activation": FAST_LLM_ACTIVATIONS[config.hidden_act],
        "add_linear_biases": False,  # Fast-LLM's default is True; Mistral's MLP has none
    }
    normalization = {"type": "rms_norm", "epsilon": config.rms_norm_eps}
    mixers = {"attention": fast_llm_attention_mixer(config)}
    if MAMBA in config.layer_types:
        mixers["mamba"] = fast_llm_mamba_mixer(config)
    return {
        "type": "pattern",
        "blocks": {name: {"mixer": mixer, "mlp": dict(mlp), "normalization": dict(normalization)} for name, mixer in mixers.items()},
        "pattern": [user_name(kind) for kind in config.layer_types],
        "num_blocks": config.num_hidden_layers,
    }

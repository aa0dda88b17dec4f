"""Which teachers we convert, and the Apriel-H1 configuration a teacher turns into.

A teacher's attention layers are copied as they are, so every attention feature it uses must exist in
``AprielH1Config``; anything else (MLP biases, per-layer sliding windows, an unknown architecture) is refused
here, before any weight is touched, with a message that names the feature.

Families: Mistral, Llama (llama3 rope scaling, attention biases), Qwen2 (q/k/v biases), Qwen3 (per-head q/k
RMSNorms, ``attention_qk_norm``), Phi-3 / Phi-4 (fused ``qkv_proj`` and ``gate_up_proj``, split by the plan;
partial rotary and longrope through ``rope_parameters``), and Apriel-H1 hybrids.
"""

from __future__ import annotations

import math

from transformers import PretrainedConfig

from modeling_apriel_h1 import AprielH1Config, AprielHConfig
from modeling_apriel_h1.layer_types import ATTENTION, MAMBA, released_layout

# apriel_h: a released Apriel-H1 checkpoint, which can be converted further (more layers to Mamba)
SUPPORTED_MODEL_TYPES = ("mistral", "llama", "qwen2", "qwen3", "phi3", "apriel_h1", "apriel_h")
# Architectures people ask for that the hybrid cannot represent, and what they have that it lacks
MISSING_FEATURES = {
    "gemma3": "interleaved sliding-window and global attention layers, and sandwich norms around each block",
    "gemma3_text": "interleaved sliding-window and global attention layers, and sandwich norms around each block",
    "gemma2": "interleaved sliding-window and global attention layers, sandwich norms and logit soft-capping",
    "mixtral": "mixture-of-experts MLPs (a router and several experts per layer)",
    "qwen2_moe": "mixture-of-experts MLPs (a router and several experts per layer)",
    "qwen3_moe": "mixture-of-experts MLPs (a router and several experts per layer)",
    "deepseek_v2": "multi-head latent attention (low-rank compressed keys and values) and mixture-of-experts MLPs",
    "deepseek_v3": "multi-head latent attention (low-rank compressed keys and values) and mixture-of-experts MLPs",
    "phimoe": "mixture-of-experts MLPs (a router and several experts per layer)",
}
# Model types whose attention uses per-head RMSNorms on q and k
_QK_NORM_MODEL_TYPES = ("qwen3",)
# Keys of a saved config that describe its file, not the model
_FILE_KEYS = ("model_type", "transformers_version", "architectures", "auto_map", "_name_or_path")
# Apriel-H1's mixer: state size 16 (paper section 3.3), dt rank ceil(hidden / 16) (Mamba's "auto").
DEFAULT_MAMBA_D_STATE = 16

# Fields every supported teacher shares with AprielH1Config under the same name and meaning.
_SHARED_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "initializer_range",
    "rms_norm_eps", "use_cache", "pad_token_id", "bos_token_id", "eos_token_id", "tie_word_embeddings",
    "rope_parameters", "attention_dropout", "dtype",
)


class UnsupportedTeacherError(ValueError):
    """The teacher uses an architecture or a feature the Apriel-H1 model cannot represent."""


def check_supported(config: PretrainedConfig) -> None:
    """Raise ``UnsupportedTeacherError`` naming the architecture or feature we cannot convert."""
    model_type = getattr(config, "model_type", None)
    if model_type in MISSING_FEATURES:
        raise UnsupportedTeacherError(
            f"teacher model_type {model_type!r} is not supported: it uses {MISSING_FEATURES[model_type]}, which "
            f"the Apriel-H1 model does not have; supported teachers are {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedTeacherError(
            f"teacher model_type {model_type!r} is not supported; supported teachers are "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} (Mistral-style decoders with RMSNorm, gated MLP and RoPE attention)"
        )
    if getattr(config, "mlp_bias", False):
        raise UnsupportedTeacherError(
            "teacher has mlp_bias=True (biases on the MLP projections); AprielH1 uses Mistral's bias-free MLP, "
            "so these weights could not be copied"
        )
    _sliding_window(config)  # raises on per-layer windows


def _sliding_window(config: PretrainedConfig) -> int | None:
    """The one sliding window all attention layers share, or None; per-layer windows cannot be represented.
    A window at least ``max_position_embeddings`` long masks nothing the model can see (Phi-4-mini's 262144
    at 131072 positions) and becomes None, so that the decode engine, which runs full attention, takes it."""
    window = _declared_sliding_window(config)
    if window is not None and window >= config.max_position_embeddings:
        return None
    return window


def _declared_sliding_window(config: PretrainedConfig) -> int | None:
    if config.model_type in ("qwen2", "qwen3"):
        kinds = set(config.layer_types or ["full_attention"])
        if kinds == {"full_attention"}:
            return None
        if kinds == {"sliding_attention"}:
            return config.sliding_window
        raise UnsupportedTeacherError(
            f"teacher uses sliding-window attention on some layers only (layer_types {config.layer_types}); "
            "AprielH1 has one sliding_window for all attention layers. Convert a teacher whose layers all use "
            "the same attention (e.g. use_sliding_window=False)"
        )
    return getattr(config, "sliding_window", None)


def _attention_biases(config: PretrainedConfig) -> tuple[bool, bool]:
    """(q/k/v bias, output bias) of the teacher's attention."""
    if config.model_type == "qwen2":
        return True, False  # Qwen2 always has q/k/v biases and a bias-free o_proj
    if config.model_type in ("llama", "qwen3"):
        return bool(config.attention_bias), bool(config.attention_bias)  # their flag covers o_proj too
    if isinstance(config, AprielH1Config):
        return config.attention_bias, config.attention_out_bias
    return False, False


def hybrid_config_from_teacher(
    config: PretrainedConfig, mamba_layers: list[int], d_state: int | None = None
) -> AprielH1Config:
    """The AprielH1Config of the student in which ``mamba_layers`` (and, for an AprielH1 teacher, its existing
    Mamba layers) are Mamba and all other layers keep the teacher's attention.

    The Mamba widths follow Mamba-in-Llama: d_inner = heads * head_dim (C takes W_Q, out_proj takes W_O) and
    d_xb = kv_heads * head_dim (x takes W_V, B takes W_K). When the teacher has q/k/v biases, the Mamba
    projections get biases too (``mamba_proj_bias``) so that MIL can copy them; see docs/mil_initialisation.md.
    """
    from .layers import check_layers_to_replace

    check_supported(config)
    check_layers_to_replace(config, mamba_layers)
    if isinstance(config, AprielH1Config):
        return _hybrid_from_hybrid(config, mamba_layers, d_state)

    qkv_bias, out_bias = _attention_biases(config)
    fields = {name: getattr(config, name) for name in _SHARED_FIELDS if hasattr(config, name)}
    if fields.get("head_dim") is None:
        fields["head_dim"] = config.hidden_size // config.num_attention_heads
    layer_types = [ATTENTION] * config.num_hidden_layers
    for index in mamba_layers:
        layer_types[index] = MAMBA
    return AprielH1Config(
        **fields,
        sliding_window=_sliding_window(config),
        attention_bias=qkv_bias,
        attention_out_bias=out_bias,
        attention_qk_norm=config.model_type in _QK_NORM_MODEL_TYPES,
        layer_types=layer_types,
        mamba_d_state=DEFAULT_MAMBA_D_STATE if d_state is None else d_state,
        mamba_dt_rank=math.ceil(config.hidden_size / 16),
        mamba_proj_bias=qkv_bias or out_bias,
    )


def _hybrid_from_hybrid(config: AprielH1Config, mamba_layers: list[int], d_state: int | None) -> AprielH1Config:
    """An Apriel-H1 teacher (ours or a released one) with ``mamba_layers`` turned to Mamba too. The student keeps
    the teacher's config class, so a released teacher gives a released-layout student (and the same dt-bias
    convention, which MIL follows for the new layers)."""
    if d_state is not None and d_state != config.mamba_d_state:
        raise ValueError(
            f"the AprielH1 teacher's Mamba layers have mamba_d_state={config.mamba_d_state}; new layers must "
            f"use the same, so leave d_state unset (got {d_state})"
        )
    fields = {key: value for key, value in config.to_dict().items() if key not in _FILE_KEYS}
    layer_types = list(config.layer_types)
    for index in mamba_layers:
        layer_types[index] = MAMBA
    if isinstance(config, AprielHConfig):
        student = AprielHConfig(**{**fields, "hybrid_block_layout": released_layout(layer_types)})
    else:
        student = AprielH1Config(**{**fields, "layer_types": layer_types})
    if mamba_layers and student.attention_bias and not student.mamba_proj_bias:
        raise UnsupportedTeacherError(
            "the AprielH1 teacher has q/k/v biases but mamba_proj_bias=False, so MIL cannot copy the biases "
            "into new Mamba layers; set mamba_proj_bias=True in the teacher's config"
        )
    return student

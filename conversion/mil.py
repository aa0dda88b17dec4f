"""Mamba-in-Llama (MIL) initialisation: a Mamba mixer built from the attention it replaces (paper eq. 3).

    C <- W_Q,  B <- W_K,  x <- W_V  (row slices of ``in_proj``),   out_proj <- W_O

as Fast-LLM's ``make_hybrid_checkpoint_with_importance_15b_mil.py`` did for the released Apriel-H1 models: a raw
copy of the weights into the slices; the mixer's d_state-group repeat then widens x and B from the KV width to
the query width (the GQA expansion). The parts attention has no counterpart for (z, dt, A, D, conv) get Mamba's
own initialisation; docs/mil_initialisation.md gives each choice and why.

Everything here is a pure function of the attention tensors, the config, the seed and the layer index, so
in-memory and streaming conversion produce the same tensors, and a layer's draws do not depend on which other
layers are replaced.
"""

from __future__ import annotations

import hashlib
import math

import torch

from modeling_apriel_h1 import AprielH1Config

ATTENTION_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj")
INIT_METHOD = "mil"
# Qwen3's per-head q/k RMSNorm weights: scale C's and B's rows by them (True) or copy W_Q and W_K as they are
# (False). Chosen by the KL to the teacher right after conversion, docs/mil_initialisation.md.
FOLD_QK_NORMS = True
# Fast-LLM's mixer adds dt_proj.bias twice (once in dt_proj, once as the scan's delta_bias); ours adds it once
# unless the config says otherwise (mamba_dt_bias_in_projection, the released layout). Storing twice Mamba's
# inverse-softplus draw where ours counts it once makes the converted mixer compute what Apriel-H1's did at init.
DT_BIAS_MULTIPLIER = 2.0


def layer_generator(seed: int, layer_index: int) -> torch.Generator:
    """A CPU generator that depends only on (seed, layer): reproducible and independent across layers."""
    digest = hashlib.sha256(f"apriel-h1-mil:{seed}:{layer_index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def _uniform(shape: tuple[int, ...], bound: float, generator: torch.Generator) -> torch.Tensor:
    return (torch.rand(shape, generator=generator, dtype=torch.float32) * 2 - 1) * bound


def fold_head_norms(attention: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``attention`` with ``q_proj`` / ``k_proj`` (weights and biases) scaled per output row by the per-head norm
    weights (``q_norm.weight``, ``k_norm.weight``, one gain per head dimension, the same for every head)."""
    folded = dict(attention)
    for projection, norm in (("q_proj", "q_norm"), ("k_proj", "k_norm")):
        gain = attention[f"{norm}.weight"].float()
        for kind in ("weight", "bias"):
            name = f"{projection}.{kind}"
            if name in attention:
                tensor = attention[name].float()
                rows = tensor.reshape(-1, gain.shape[0], *tensor.shape[1:])  # (heads, head_dim, ...)
                scaled = rows * gain.reshape(1, -1, *([1] * (tensor.dim() - 1)))
                folded[name] = scaled.reshape(tensor.shape).to(attention[name].dtype)
    return folded


def mil_mixer_tensors(
    attention: dict[str, torch.Tensor],
    config: AprielH1Config,
    layer_index: int,
    seed: int,
    dtype: torch.dtype,
    fold_qk_norms: bool = FOLD_QK_NORMS,
) -> dict[str, torch.Tensor]:
    """The ``mixer.*`` tensors of a Mamba layer initialised from that layer's attention.

    ``attention`` maps ``q_proj.weight`` ... ``o_proj.weight`` (and ``*.bias`` where the teacher has them, and
    ``q_norm.weight`` / ``k_norm.weight`` for a Qwen3 teacher) to the teacher's tensors. Returns names relative
    to the mixer (``in_proj.weight``, ``A_log``, ...). With ``fold_qk_norms`` the q/k norm weights scale C's and
    B's rows (the norm's per-channel gain; its division by the head's RMS has no linear counterpart).
    """
    hidden, d_inner, d_xb = config.hidden_size, config.mamba_d_inner, config.mamba_d_xb
    d_state, d_conv, dt_rank = config.mamba_d_state, config.mamba_d_conv, config.mamba_dt_rank
    expected = {"q_proj": (d_inner, hidden), "k_proj": (d_xb, hidden), "v_proj": (d_xb, hidden), "o_proj": (hidden, d_inner)}
    for name, shape in expected.items():
        actual = tuple(attention[f"{name}.weight"].shape)
        if actual != shape:
            raise ValueError(
                f"layer {layer_index}: {name}.weight has shape {actual} but MIL needs {shape} "
                f"(mamba_d_inner={d_inner} = heads * head_dim, mamba_d_xb={d_xb} = kv_heads * head_dim)"
            )
    if fold_qk_norms and "q_norm.weight" in attention:
        attention = fold_head_norms(attention)
    generator = layer_generator(seed, layer_index)
    # nn.Linear's default (kaiming-uniform, a=sqrt(5)) bound, what Mamba and Fast-LLM's MIL script leave z and dt_in_proj with
    linear_bound = 1 / math.sqrt(hidden)
    z_weight = _uniform((d_inner, hidden), linear_bound, generator).to(dtype)  # the largest draw: stored in dtype at once
    dt_in_weight = _uniform((dt_rank, hidden), linear_bound, generator)
    dt_std = dt_rank**-0.5 * config.mamba_dt_scale
    dt_proj_weight = _uniform((d_inner, dt_rank), dt_std, generator)
    log_min, log_max = math.log(config.mamba_dt_min), math.log(config.mamba_dt_max)
    dt = torch.exp(torch.rand(d_inner, generator=generator) * (log_max - log_min) + log_min)
    dt = dt.clamp(min=config.mamba_dt_init_floor)
    stored_multiplier = 1.0 if config.mamba_dt_bias_in_projection else DT_BIAS_MULTIPLIER  # the mixer doubles it itself
    dt_bias = (dt + torch.log(-torch.expm1(-dt))) * stored_multiplier  # inverse softplus
    conv_bound = 1 / math.sqrt(d_conv)  # nn.Conv1d's default for a depthwise kernel (fan_in = d_conv)
    conv_weight = _uniform((d_inner, 1, d_conv), conv_bound, generator)
    conv_bias = _uniform((d_inner,), conv_bound, generator)

    def teacher(name: str) -> torch.Tensor:  # straight to the output dtype: a copy, and no float32 detour in memory
        return attention[name].to("cpu", dtype)

    def teacher_bias(name: str, width: int) -> torch.Tensor:
        return teacher(f"{name}.bias") if f"{name}.bias" in attention else torch.zeros(width, dtype=dtype)

    tensors = {
        # rows in the mixer's order: z, x, B, C
        "in_proj.weight": torch.cat([z_weight, teacher("v_proj.weight"), teacher("k_proj.weight"), teacher("q_proj.weight")]),
        "dt_in_proj.weight": dt_in_weight,
        "dt_proj.weight": dt_proj_weight,
        "conv1d.weight": conv_weight,
        "A_log": torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).expand(d_inner, d_state).contiguous(),
        "D": torch.ones(d_inner),
        "out_proj.weight": teacher("o_proj.weight"),
    }
    if config.mamba_dt_proj_bias:
        tensors["dt_proj.bias"] = dt_bias
    if config.mamba_conv_bias:
        tensors["conv1d.bias"] = conv_bias
    if config.mamba_proj_bias:
        tensors["in_proj.bias"] = torch.cat(
            [torch.zeros(d_inner, dtype=dtype), teacher_bias("v_proj", d_xb), teacher_bias("k_proj", d_xb), teacher_bias("q_proj", d_inner)]
        )
        tensors["dt_in_proj.bias"] = torch.zeros(dt_rank, dtype=dtype)
        tensors["out_proj.bias"] = teacher_bias("o_proj", hidden)
    return {name: tensor.to(dtype) for name, tensor in tensors.items()}  # draws are made in float32, stored in dtype

"""Synthetic released-format (``model_type: apriel_h``) configs and checkpoints, and the release's equations.

SYNTHETIC: no real released config.json was available (the Hugging Face Hub is not reachable here). The
configs below follow the layout the release's ``configuration_apriel_h.py`` writes (``AprielHConfig``, a
``MistralConfig`` filling every ``ssm_config_default`` key into ``ssm_cfg``), at a tiny size. The reference
model is written from the release's modeling code (= Fast-LLM ``fast_llm/models/ssm/external/apriel_15b_hybrid/
modeling_ssm_hybrid_apriel15b.py`` @ed800ae8: ``Mamba2.forward``, Mistral attention / MLP / RMSNorm).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from modeling_apriel_h1 import AprielHConfig, AprielHForCausalLM

# The release's ssm_config_default (configuration_apriel_h.py), copied here so that the reference does not use ours
RELEASE_SSM_CONFIG_DEFAULT = {
    "d_state": 64, "n_qk_heads": 32, "expand": 1, "chunk_size": 128, "activation": "identity", "bias": False,
    "d_conv": 4, "d_inner": 32 * 128, "d_xb": None, "dt_rank": "auto", "dt_min": 0.001, "dt_max": 0.1,
    "dt_init": "random", "dt_scale": 1.0, "dt_init_floor": 1e-4, "conv_bias": True,
}
# ... as that AprielHConfig fills it into every saved ssm_cfg, at tiny widths
RELEASED_SSM_CFG = {
    "d_state": 8, "n_qk_heads": 32, "expand": 1, "chunk_size": 128, "activation": "identity", "bias": False,
    "d_conv": 4, "d_inner": 64, "d_xb": 32, "dt_rank": "auto", "dt_min": 0.001, "dt_max": 0.1, "dt_init": "random",
    "dt_scale": 1.0, "dt_init_floor": 0.0001, "conv_bias": True,
}
RELEASED = {  # synthetic, see the module docstring
    "model_type": "apriel_h",
    "architectures": ["AprielHForCausalLM"],
    "auto_map": {  # the release's own remote code, which is NOT in the synthetic directories
        "AutoConfig": "configuration_apriel_h.AprielHConfig",
        "AutoModel": "modeling_apriel_h.AprielHModel",
        "AutoModelForCausalLM": "modeling_apriel_h.AprielHForCausalLM",
    },
    "vocab_size": 97, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "hidden_act": "silu",
    "max_position_embeddings": 256, "initializer_range": 0.02, "rms_norm_eps": 1e-05, "use_cache": True,
    "rope_theta": 1000000.0, "sliding_window": None, "attention_dropout": 0.0, "tie_word_embeddings": False,
    "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32", "transformers_version": "4.53.2",
    "hybrid_block_layout": ["t", "m2", "m2", "t"],
    "ssm_cfg": RELEASED_SSM_CFG,
}


def random_released_weights(config: AprielHConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors for every weight, with realistic dt biases (inverse softplus of dt in [1e-3, 1e-1]) and
    norms away from 1, so that every tensor (and the doubled dt bias) shows in the logits."""
    with torch.device("meta"):
        shapes = {name: tensor.shape for name, tensor in AprielHForCausalLM(config).state_dict().items()}
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape in shapes.items():
        if name.endswith("dt_proj.bias"):
            dt = torch.exp(torch.rand(shape, generator=generator) * math.log(100) + math.log(1e-3))
            weights[name] = dt + torch.log(-torch.expm1(-dt))
        elif name.endswith("A_log"):
            weights[name] = torch.log(torch.rand(shape, generator=generator) * 8 + 0.5)
        elif name.endswith("layernorm.weight") or name == "model.norm.weight":
            weights[name] = 1 + 0.2 * torch.randn(shape, generator=generator)
        else:
            weights[name] = torch.randn(shape, generator=generator) * 0.2
    return weights


def write_released_dir(directory: Path, config: dict, weights: dict[str, torch.Tensor]) -> Path:
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})
    return directory


# ----- the release's equations, in fp32, one token position at a time where it scans -------------------------------


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def _attention(w: dict, h: torch.Tensor, cfg: dict) -> torch.Tensor:
    """Mistral attention: GQA, default RoPE with rope_theta, causal softmax(q k^T / sqrt(head_dim)) v."""
    batch, length, _ = h.shape
    heads, kv_heads, head_dim = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    q = (h @ w["self_attn.q_proj.weight"].T).view(batch, length, heads, head_dim).transpose(1, 2)
    k = (h @ w["self_attn.k_proj.weight"].T).view(batch, length, kv_heads, head_dim).transpose(1, 2)
    v = (h @ w["self_attn.v_proj.weight"].T).view(batch, length, kv_heads, head_dim).transpose(1, 2)
    inv_freq = 1.0 / cfg["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.arange(length, dtype=torch.float32)[:, None] * inv_freq[None]
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
    k, v = k.repeat_interleave(heads // kv_heads, dim=1), v.repeat_interleave(heads // kv_heads, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim)
    scores = scores.masked_fill(torch.ones(length, length, dtype=torch.bool).triu(1), float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, heads * head_dim)
    return out @ w["self_attn.o_proj.weight"].T


def _mamba2(w: dict, h: torch.Tensor, ssm: dict) -> torch.Tensor:
    """The release's ``Mamba2.forward`` (repeat_kv_before_conv=True), scan written as its recurrence:
    dt = dt_proj(dt_in_proj(h)) WITH dt_proj.bias, then delta = softplus(dt + dt_proj.bias) in the scan."""
    batch, length, _ = h.shape
    d_inner, d_xb, d_state = ssm["d_inner"], ssm["d_xb"], ssm["d_state"]
    repeat = d_inner // d_xb
    z, x, B, C = (h @ w["mixer.in_proj.weight"].T).split([d_inner, d_xb, d_xb, d_inner], dim=-1)

    def repeat_kv(t: torch.Tensor) -> torch.Tensor:  # "b l (g n) -> b g l n", each group repeated in place
        groups = t.view(batch, length, d_xb // d_state, 1, d_state).expand(-1, -1, -1, repeat, -1)
        return groups.reshape(batch, length, d_inner)

    x, B = repeat_kv(x), repeat_kv(B)  # (batch, length, d_inner)
    dt = (h @ w["mixer.dt_in_proj.weight"].T) @ w["mixer.dt_proj.weight"].T + w["mixer.dt_proj.bias"]
    delta = F.softplus(dt + w["mixer.dt_proj.bias"])  # the scan's delta_bias: the bias a second time
    padded = F.pad(x.transpose(1, 2), (ssm["d_conv"] - 1, 0))
    x = F.silu(F.conv1d(padded, w["mixer.conv1d.weight"], w.get("mixer.conv1d.bias"), groups=d_inner)).transpose(1, 2)
    A = -torch.exp(w["mixer.A_log"])  # (d_inner, d_state)
    B = B.view(batch, length, d_inner // d_state, d_state).repeat_interleave(d_state, dim=2)  # channel c: group c // d_state
    C = C.view(batch, length, d_inner // d_state, d_state).repeat_interleave(d_state, dim=2)
    state = torch.zeros(batch, d_inner, d_state)
    ys = []
    for t in range(length):
        state = torch.exp(delta[:, t, :, None] * A) * state + (delta[:, t] * x[:, t])[..., None] * B[:, t]
        ys.append((state * C[:, t]).sum(-1) + w["mixer.D"] * x[:, t])
    y = torch.stack(ys, dim=1) * F.silu(z)
    return y @ w["mixer.out_proj.weight"].T


def released_logits(config: dict, weights: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """Logits of the released model in fp32, from its equations (no code of this package)."""
    ssm = {**RELEASE_SSM_CONFIG_DEFAULT, **config["ssm_cfg"]}  # the release fills missing keys so
    ssm["d_inner"] = ssm["d_inner"] or ssm["expand"] * config["hidden_size"]  # and Mamba2.__init__ resolves Nones so
    ssm["d_xb"] = ssm["d_xb"] or config["hidden_size"]
    eps = config["rms_norm_eps"]
    h = weights["model.embed_tokens.weight"][ids]
    for index, kind in enumerate(config["hybrid_block_layout"]):
        w = {name.removeprefix(f"model.layers.{index}."): t for name, t in weights.items() if name.startswith(f"model.layers.{index}.")}
        normed = _rms_norm(h, w["input_layernorm.weight"], eps)
        h = h + (_attention(w, normed, config) if kind == "t" else _mamba2(w, normed, ssm))
        normed = _rms_norm(h, w["post_attention_layernorm.weight"], eps)
        gate, up = normed @ w["mlp.gate_proj.weight"].T, normed @ w["mlp.up_proj.weight"].T
        h = h + (F.silu(gate) * up) @ w["mlp.down_proj.weight"].T
    return _rms_norm(h, weights["model.norm.weight"], eps) @ weights["lm_head.weight"].T

"""Apriel-H1: a Mistral-style decoder in which chosen layers use a Mamba-1 mixer instead of attention.

Read top to bottom: Mamba mixer, attention, decoder layers, pretrained base, model, causal-LM head. The
attention layers are the teacher's (GQA + RoPE through transformers' attention interface); the Mamba layers
are the mixer Apriel-H1 used (ServiceNow Fast-LLM's "m2" block, after M1): x and B are projected at the KV
width and repeated over the query groups, C at full width, with a gate z, a depthwise causal conv, a low-rank
time step, a per-channel diagonal A and a skip D. ``docs/fast_llm_interop.md`` lists how this maps to the
released checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import ModuleType
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import (
    create_causal_mask,
    create_sliding_window_causal_mask,
    find_packed_sequence_indices,
)
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.models.mistral.modeling_mistral import (
    MistralMLP,
    MistralRMSNorm,
    MistralRotaryEmbedding,
    eager_attention_forward,
    rotate_half,
)
from transformers.utils import can_return_tuple
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_apriel_h1 import AprielH1Config, AprielHConfig
from .layer_types import ATTENTION, MAMBA, is_mamba
from .transformers_compat import CACHE_FIELD, GENERATE_TAKES_NEXT_SEQUENCE_LENGTH, one_cache

try:  # the installed package: every kernel backend (mamba-ssm, Triton, reference) behind one dispatch
    from modeling_apriel_h1.ops import backend_for_packed_rows, resolve_ops
except ImportError:  # remote code on a machine without the package: the PyTorch reference shipped beside this file
    from .mamba_reference import causal_conv1d, causal_conv1d_update, selective_scan, selective_state_update

    class _ReferenceOps:
        NAME = "reference"
        selective_scan = staticmethod(selective_scan)
        selective_state_update = staticmethod(selective_state_update)
        causal_conv1d = staticmethod(causal_conv1d)
        causal_conv1d_update = staticmethod(causal_conv1d_update)

    def resolve_ops(device: torch.device, preference: str | None = None):
        return _ReferenceOps

    def backend_for_packed_rows(ops):
        return ops  # the reference resets at document starts


def _count_stepped_token(cache_layer) -> None:
    """Count a decoding step's token in a Mamba layer's cache entry, which ``step`` updates in place.

    From transformers 5.25 a linear-attention cache layer counts the tokens it has seen (``update_conv_state``
    adds those of a prefill, ``increase_count`` one step's) and ``Cache.get_seq_length()``, which generate() asks
    of layer 0, answers with that count; earlier versions answer from the first attention layer and have no count.
    """
    if hasattr(cache_layer, "increase_count"):
        cache_layer.increase_count(0)


def _repeat_groups(tensor: torch.Tensor, group_size: int, repeats: int) -> torch.Tensor:
    """(..., groups * group_size) -> (..., groups * repeats * group_size), each group repeated in place.

    This is how Apriel-H1 widens x and B from the KV width to the full width (Fast-LLM's ``repeat_kv`` over
    groups of ``d_state`` channels).
    """
    if repeats == 1:
        return tensor
    *lead, width = tensor.shape
    grouped = tensor.reshape(*lead, width // group_size, 1, group_size)
    return grouped.expand(*lead, width // group_size, repeats, group_size).reshape(*lead, width * repeats)


def _repeat_channel_groups(tensor: torch.Tensor, group_size: int, repeats: int) -> torch.Tensor:
    """``_repeat_groups`` along the channel axis of a (batch, channels, seq) tensor."""
    if repeats == 1:
        return tensor
    batch, width, length = tensor.shape
    grouped = tensor.view(batch, width // group_size, 1, group_size, length)
    return grouped.expand(-1, -1, repeats, -1, -1).reshape(batch, width * repeats, length)


def _linear_channel_major(inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(inputs, weight, bias)`` for inputs (batch, seq, in), returned as (batch, out, seq) contiguous:
    one GEMM per batch row, weight @ row^T, which writes the transposed layout itself (``torch.matmul`` would
    fold the batch into the rows and hand back a transposed view of the token-major result)."""
    rows = [
        weight @ row.transpose(0, 1) if bias is None else torch.addmm(bias[:, None], weight, row.transpose(0, 1))
        for row in inputs.unbind(0)
    ]
    return rows[0][None] if len(rows) == 1 else torch.stack(rows)


def _packed_document_starts(
    position_ids: torch.Tensor | None, batch_size: int, attention_mask: torch.Tensor | None, cache: Cache | None
) -> torch.Tensor | None:
    """(batch, seq) bool, True at the first token of every document after the first of a packed row; None when
    the rows are not packed.

    A row is packed when its ``position_ids`` restart (transformers' convention, as its packing collators and
    TRL's padding-free collator write them), detected by transformers' own ``find_packed_sequence_indices``
    under the condition its mask functions use (no attention mask, no cache), so that the Mamba layers
    separate exactly the documents the attention layers separate.
    """
    if position_ids is None or attention_mask is not None or cache is not None:
        return None
    document_ids = find_packed_sequence_indices(position_ids.expand(batch_size, -1))
    if document_ids is None:
        return None
    return F.pad(document_ids.diff(dim=-1) != 0, (1, 0))


class AprielH1Mamba(nn.Module):
    """The Mamba-1 mixer of Apriel-H1 with its inference state (conv window + SSM state) kept in the cache."""

    def __init__(self, config: AprielH1Config, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.d_inner = config.mamba_d_inner
        self.d_xb = config.mamba_d_xb
        self.d_state = config.mamba_d_state
        self.d_conv = config.mamba_d_conv
        self.dt_rank = config.mamba_dt_rank
        self.repeat_group = (self.d_inner // self.d_state) // (self.d_xb // self.d_state)
        self.num_groups = self.d_inner // self.d_state  # B and C groups after repetition (one per C "head")

        self.in_proj = nn.Linear(config.hidden_size, 2 * self.d_inner + 2 * self.d_xb, bias=config.mamba_proj_bias)
        self.dt_in_proj = nn.Linear(config.hidden_size, self.dt_rank, bias=config.mamba_proj_bias)
        # dt_proj's bias is added inside the scan (``delta_bias``), and in ``_time_step`` too where the config says
        # so (the released checkpoints); see docs/fast_llm_interop.md
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=config.mamba_dt_proj_bias)
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, kernel_size=self.d_conv, groups=self.d_inner,
            padding=self.d_conv - 1, bias=config.mamba_conv_bias,
        )
        self.A_log = nn.Parameter(torch.empty(self.d_inner, self.d_state))
        self.D = nn.Parameter(torch.empty(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, config.hidden_size, bias=config.mamba_proj_bias)
        self.bound_kernels: ModuleType | None = None

    def parameters_read_outside_their_module(self) -> list[nn.Parameter]:
        """Parameters of ``dt_proj`` and ``conv1d`` that ``forward`` passes to the kernels without calling those
        modules. Sharding schemes that gather a module's parameters only around its own forward (DeepSpeed
        ZeRO-3) must be told to gather these for this mixer; see ``recipes.training.zero3``."""
        return [param for module in (self.dt_proj, self.conv1d) for param in module.parameters()]

    def _time_step(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The time step before the kernels add ``dt_proj.bias`` and apply softplus: (..., hidden) -> (..., d_inner).

        The one place the two bias conventions differ. The released Apriel-H1 mixer (and Fast-LLM's) adds the
        bias here as well, so it counts twice (``mamba_dt_bias_in_projection``); ours adds it only in the kernels.
        Prefill and single-token decoding both call this, so they cannot disagree.
        """
        return self.widen_time_step(self.dt_in_proj(hidden_states))

    def widen_time_step(self, low_rank: torch.Tensor) -> torch.Tensor:
        """``dt_proj`` applied to ``dt_in_proj``'s output (..., dt_rank): the second half of ``_time_step``, for
        the decode engine, which computes ``dt_in_proj`` in one GEMM with ``in_proj``."""
        bias = self.dt_proj.bias if self.config.mamba_dt_bias_in_projection else None
        return F.linear(low_rank, self.dt_proj.weight, bias)

    def kernels(self, device: torch.device) -> ModuleType:
        """The kernel backend this mixer runs on: bound once per model and device by ``AprielH1Model`` (so that
        no dispatch runs per layer per step, and compiled decode steps trace no environment look-ups); a mixer
        used on its own resolves it here."""
        if self.bound_kernels is None:
            self.bound_kernels = resolve_ops(device, self.config.kernel_backend)
        return self.bound_kernels

    def step(
        self, hidden_states: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor,
        A: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One decoding step for every row: hidden_states (batch, 1, hidden); conv_state (batch, d_inner, d_conv)
        and ssm_state (batch, d_inner, d_state) are updated in place and never rebound, so a CUDA graph that
        captured this step stays valid. Shared by ``forward`` (cached generation) and the decode engine, which
        passes ``A = -exp(A_log)`` computed once instead of at every step.

        B is widened to C's groups here because every backend's state update (mamba-ssm's too) reads B and C
        with one group index; the engine's fused step (``ops.triton_kernels.mamba_decode_step``) reads x and B
        at their KV width instead."""
        ops = self.kernels(hidden_states.device)
        batch = hidden_states.shape[0]
        hidden = hidden_states[:, 0]  # (batch, hidden)
        z, x, B, C = self.in_proj(hidden).split([self.d_inner, self.d_xb, self.d_xb, self.d_inner], dim=-1)
        dt = self._time_step(hidden)  # (batch, d_inner)
        x = _repeat_groups(x, self.d_state, self.repeat_group)  # (batch, d_inner)
        B = _repeat_groups(B, self.d_state, self.repeat_group).view(batch, self.num_groups, self.d_state)
        C = C.view(batch, self.num_groups, self.d_state)
        A = -torch.exp(self.A_log.float()) if A is None else A
        x = ops.causal_conv1d_update(x, conv_state, self.conv1d.weight.squeeze(1), self.conv1d.bias, "silu")
        y = ops.selective_state_update(ssm_state, x, dt, A, B, C, self.D, z, self.dt_proj.bias, dt_softplus=True)
        return self.out_proj(y).unsqueeze(1)

    def forward(
        self,
        hidden_states: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        document_starts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """hidden_states (batch, seq, hidden); padding_mask (batch, seq), 1 for real tokens, 0 for padding;
        document_starts (batch, seq) bool, True where a packed document begins (conv and state restart there)."""
        seq_len = hidden_states.shape[1]
        cache_layer = cache.layers[self.layer_idx] if cache is not None else None
        has_state = cache_layer is not None and cache_layer.has_previous_state[0]
        if has_state and seq_len == 1:
            output = self.step(hidden_states, cache_layer.conv_states[0], cache_layer.recurrent_states[0])
            _count_stepped_token(cache_layer)
            return output
        out, conv_inputs, new_ssm_state = self.prefill(
            hidden_states,
            conv_state=cache_layer.conv_states[0] if has_state else None,
            ssm_state=cache_layer.recurrent_states[0] if has_state else None,
            padding_mask=padding_mask,
            document_starts=document_starts,
            return_conv="inputs" if cache_layer is not None else None,
        )
        if cache_layer is not None:
            # The cache keeps the last d_conv inputs as the conv state. It is handed all of this call's inputs, as
            # transformers' own linear-attention layers hand theirs, so that it also counts them (see
            # ``_count_stepped_token``). After the conv, which has read the previous state in place.
            cache_layer.update_conv_state(conv_inputs, conv_kernel_size=self.d_conv)
            cache_layer.update_recurrent_state(new_ssm_state)
        return out

    def _project_token_major(
        self, hidden_states: torch.Tensor, padding_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, ...]:
        """The prefill's kernel inputs from the projections' (batch, seq, channels) outputs, as transposed views:
        z, x (x widened to d_inner) and dt (batch, d_inner, seq); B, C (batch, groups, d_state, seq). The kernels
        copy each to unit time stride (the layout copies ``prefill_layout="channel_major"`` avoids)."""
        batch, seq_len, _ = hidden_states.shape
        z, x, B, C = self.in_proj(hidden_states).split([self.d_inner, self.d_xb, self.d_xb, self.d_inner], dim=-1)
        dt = self._time_step(hidden_states)  # (batch, seq, d_inner)
        if padding_mask is not None:
            # padded positions must not reach the conv window or the state: a zero input leaves both untouched
            x = x * padding_mask[..., None].to(x.dtype)
        x = _repeat_groups(x, self.d_state, self.repeat_group).transpose(1, 2)  # (batch, d_inner, seq)
        B = _repeat_groups(B, self.d_state, self.repeat_group)
        B = B.view(batch, seq_len, self.num_groups, self.d_state).permute(0, 2, 3, 1)  # (batch, G, N, seq)
        C = C.view(batch, seq_len, self.num_groups, self.d_state).permute(0, 2, 3, 1)
        return z.transpose(1, 2), x, B, C, dt.transpose(1, 2)

    def _project_channel_major(
        self, hidden_states: torch.Tensor, padding_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, ...]:
        """What ``_project_token_major`` returns, with unit time stride from the start: each projection runs as
        W @ hidden^T per batch row, so the GEMM writes (channels, seq) and z, C and dt are views of its output.
        Only x and B are copied, to repeat them over the query groups (a copy along channels, at full bandwidth,
        where the token-major layout transposes five tensors)."""
        batch, seq_len, _ = hidden_states.shape
        zxbc = _linear_channel_major(hidden_states, self.in_proj.weight, self.in_proj.bias)
        z, x, B, C = zxbc.split([self.d_inner, self.d_xb, self.d_xb, self.d_inner], dim=1)
        low_rank = _linear_channel_major(hidden_states, self.dt_in_proj.weight, self.dt_in_proj.bias)
        dt_bias = self.dt_proj.bias if self.config.mamba_dt_bias_in_projection else None
        dt = _linear_channel_major(low_rank.transpose(1, 2), self.dt_proj.weight, dt_bias)  # (batch, d_inner, seq)
        if padding_mask is not None:
            x = x * padding_mask[:, None, :].to(x.dtype)
        x = _repeat_channel_groups(x, self.d_state, self.repeat_group)  # (batch, d_inner, seq)
        groups_kv = self.d_xb // self.d_state
        B = B.view(batch, groups_kv, 1, self.d_state, seq_len).expand(-1, -1, self.repeat_group, -1, -1)
        B = B.reshape(batch, self.num_groups, self.d_state, seq_len)
        C = C.view(batch, self.num_groups, self.d_state, seq_len)
        return z, x, B, C, dt

    def prefill(
        self,
        hidden_states: torch.Tensor,
        conv_state: torch.Tensor | None = None,
        ssm_state: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
        document_starts: torch.Tensor | None = None,
        return_conv: Literal["window", "inputs"] | None = "window",
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """The mixer over a sequence that continues from explicit states: (output (batch, seq, hidden), the conv
        state, the SSM state after it (batch, d_inner, d_state) fp32).

        The conv state is, by ``return_conv``: ``"window"``, the conv window after the sequence (batch, d_inner,
        d_conv), which the decode engine's slots keep; ``"inputs"``, this call's conv inputs (batch, d_inner,
        seq), which transformers' cache layers take to update their window and count the tokens; None, nothing.

        ``conv_state`` / ``ssm_state`` None start a new sequence. Prefilling a prompt in chunks, each chunk handed
        the states the previous one returned, computes what one call over the whole prompt computes (the conv
        reads its window across the chunk boundary, the scan continues its recurrence): the decode engine's
        chunked prefill and its prefix cache rely on this. The inputs are left as they are."""
        ops = self.kernels(hidden_states.device)
        if document_starts is not None:
            ops = backend_for_packed_rows(ops)
        if self.config.prefill_layout == "channel_major":
            z, x, B, C, dt = self._project_channel_major(hidden_states, padding_mask)
        else:
            z, x, B, C, dt = self._project_token_major(hidden_states, padding_mask)
        A = -torch.exp(self.A_log.float())
        conv_weight = self.conv1d.weight.squeeze(1)  # (d_inner, d_conv)

        resets = {} if document_starts is None else {"document_starts": document_starts}
        conv_inputs = x
        x, conv_window = ops.causal_conv1d(
            x, conv_weight, self.conv1d.bias, "silu", initial_state=conv_state,
            return_final_states=return_conv == "window", **resets,
        )
        if padding_mask is not None:
            x = x * padding_mask[:, None, :].to(x.dtype)
        y, new_ssm_state = ops.selective_scan(
            x, dt, A, B, C, self.D, z, self.dt_proj.bias, delta_softplus=True, initial_state=ssm_state,
            return_last_state=True, **resets,
        )
        new_conv_state = {"window": conv_window, "inputs": conv_inputs, None: None}[return_conv]
        return self.out_proj(y.transpose(1, 2)), new_conv_state, new_ssm_state


class AprielH1RotaryEmbedding(MistralRotaryEmbedding):
    """Mistral's rotary embedding, with ``partial_rotary_factor`` honoured by the default rope type too (Phi-3's
    equation): cos and sin then cover only the first ``config.rotary_dim`` dimensions of a head. transformers'
    scaled rope types (llama3, longrope, yarn, ...) read the factor themselves."""

    @staticmethod
    def compute_default_rope_parameters(config: AprielH1Config, device=None, **kwargs) -> tuple[torch.Tensor, float]:
        base = config.rope_parameters["rope_theta"]
        dim = config.rotary_dim
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float, device=device) / dim))
        return inv_freq, 1.0


def apply_rotary_pos_emb(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embedding of q and k (batch, heads, seq, head_dim) with cos, sin (batch, seq, rotary_dim). When
    rotary_dim < head_dim (partial rotary) only the first rotary_dim dimensions turn, the rest pass through, as
    in transformers' Phi-3; with the whole head it is Mistral's equation exactly."""
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    rotary_dim = cos.shape[-1]
    if rotary_dim == q.shape[-1]:
        return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)
    q_rot, q_pass = q[..., :rotary_dim], q[..., rotary_dim:]
    k_rot, k_pass = k[..., :rotary_dim], k[..., rotary_dim:]
    q_embed = torch.cat([(q_rot * cos) + (rotate_half(q_rot) * sin), q_pass], dim=-1)
    k_embed = torch.cat([(k_rot * cos) + (rotate_half(k_rot) * sin), k_pass], dim=-1)
    return q_embed, k_embed


class AprielH1Attention(nn.Module):
    """The teacher's grouped-query attention with RoPE, optionally with q/k/v (Qwen2) or output biases, per-head
    q/k RMSNorms (Qwen3) and a rotary embedding over part of each head (Phi-4-mini)."""

    def __init__(self, config: AprielH1Config, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        qkv_bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, config.num_attention_heads * self.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(config.hidden_size, config.num_key_value_heads * self.head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(
            config.num_attention_heads * self.head_dim, config.hidden_size, bias=config.attention_out_bias
        )
        if config.attention_qk_norm:
            self.q_norm = MistralRMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.k_norm = MistralRMSNorm(self.head_dim, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None,
        cache: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns the attention output and, from the eager implementation, the weights (batch, heads, seq, keys)
        that ``output_attentions`` records; the fused implementations return None for them."""
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query_states = self.q_proj(hidden_states).view(hidden_shape)  # (batch, seq, heads, dim)
        key_states = self.k_proj(hidden_states).view(hidden_shape)
        if self.config.attention_qk_norm:
            query_states, key_states = self.q_norm(query_states), self.k_norm(key_states)
        query_states = query_states.transpose(1, 2)  # (batch, heads, seq, dim)
        key_states = key_states.transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        cos, sin = position_embeddings
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)
        if cache is not None:
            key_states, value_states = cache.update(key_states, value_states, self.layer_idx)
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query_states,
            key_states,
            value_states,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            sliding_window=self.config.sliding_window,
            **kwargs,
        )
        return self.o_proj(attn_output.reshape(*input_shape, -1).contiguous()), attn_weights


class AprielH1DecoderLayer(GradientCheckpointingLayer):
    """Pre-norm residual block; only the sequence mixer differs between layer types.

    The mixer is named ``self_attn`` in attention layers and ``mixer`` in Mamba layers, as in the released
    checkpoints, so weights load without renaming.
    """

    def __init__(self, config: AprielH1Config, layer_idx: int):
        super().__init__()
        self.is_mamba = is_mamba(config.layer_types[layer_idx])
        if self.is_mamba:
            self.mixer = AprielH1Mamba(config, layer_idx)
        else:
            self.self_attn = AprielH1Attention(config, layer_idx)
        self.mlp = MistralMLP(config)
        self.input_layernorm = MistralRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = MistralRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        document_starts: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        if self.is_mamba:
            hidden_states = self.mixer(
                hidden_states, padding_mask=padding_mask, cache=cache, document_starts=document_starts
            )
        else:
            hidden_states, _ = self.self_attn(
                hidden_states,
                position_embeddings=position_embeddings,
                attention_mask=attention_mask,
                cache=cache,
                **kwargs,
            )
        hidden_states = residual + hidden_states
        residual = hidden_states
        hidden_states = self.mlp(self.post_attention_layernorm(hidden_states))
        return residual + hidden_states


class AprielH1PreTrainedModel(PreTrainedModel):
    config_class = AprielH1Config
    config: AprielH1Config
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["AprielH1DecoderLayer"]
    _skip_keys_device_placement = ["cache", "past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _is_stateful = True  # Mamba states cannot be rolled back: no assisted generation
    # what ``output_hidden_states`` / ``output_attentions`` record, through transformers' forward hooks: every
    # layer's output, and the weights of the attention layers (Mamba layers have none)
    _can_record_outputs = {"hidden_states": AprielH1DecoderLayer, "attentions": AprielH1Attention}

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, AprielH1Mamba):
            self._init_mamba(module, self.config)

    @staticmethod
    def _init_mamba(module: AprielH1Mamba, config: AprielH1Config) -> None:
        """Mamba's initialisation for a mixer built from scratch: S4D-real A, unit skip D, and a time-step bias
        whose softplus is log-uniform in [dt_min, dt_max]. Converted students get theirs from
        ``conversion/mil.py`` instead (see docs/mil_initialisation.md).

        Goes through ``transformers.initialization`` so that weights loaded from a checkpoint are left alone.
        """
        arange = torch.arange(1, module.d_state + 1, dtype=torch.float32, device=module.A_log.device)
        init.copy_(module.A_log, torch.log(arange).expand(module.d_inner, -1))
        init.ones_(module.D)
        dt_init_std = module.dt_rank**-0.5 * config.mamba_dt_scale
        init.uniform_(module.dt_proj.weight, -dt_init_std, dt_init_std)
        if module.dt_proj.bias is not None:
            log_min, log_max = math.log(config.mamba_dt_min), math.log(config.mamba_dt_max)
            dt = torch.exp(torch.rand(module.d_inner, device=module.D.device) * (log_max - log_min) + log_min)
            dt = dt.clamp(min=config.mamba_dt_init_floor)
            init.copy_(module.dt_proj.bias, dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        bound = 1 / math.sqrt(module.d_conv)
        init.uniform_(module.conv1d.weight, -bound, bound)
        if module.conv1d.bias is not None:
            init.uniform_(module.conv1d.bias, -bound, bound)


class AprielH1Model(AprielH1PreTrainedModel):
    def __init__(self, config: AprielH1Config):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [AprielH1DecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = MistralRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = AprielH1RotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.kernels_device: torch.device | None = None
        self.post_init()

    def bind_kernels(self, device: torch.device) -> None:
        """Choose the Mamba kernel backend once per model and device (not per layer per step)."""
        if self.kernels_device == device:
            return
        kernels = resolve_ops(device, self.config.kernel_backend)
        for layer in self.layers:
            if layer.is_mamba:
                layer.mixer.bound_kernels = kernels
        self.kernels_device = device

    def _masks(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | dict[str, torch.Tensor | None] | None,
        cache: Cache | None,
        position_ids: torch.Tensor,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(mask for the attention layers, 2-D padding mask of the current tokens for the Mamba layers).

        ``generate`` with a compileable cache (``cache_implementation="static"``) prepares the masks itself and
        passes one per layer type; otherwise the 2-D padding mask (or None) comes in and both are built here.
        """
        if isinstance(attention_mask, dict):
            return attention_mask.get(ATTENTION), attention_mask.get(MAMBA)
        mask_function = create_causal_mask if self.config.sliding_window is None else create_sliding_window_causal_mask
        causal_mask = mask_function(self.config, inputs_embeds, attention_mask, cache, position_ids=position_ids)
        # Mamba layers see only which of the current tokens are real; the 2-D mask covers past + current tokens.
        padding_mask = None
        if attention_mask is not None and attention_mask.dim() == 2 and inputs_embeds.shape[1] > 1:
            padding_mask = attention_mask[:, -inputs_embeds.shape[1] :]
        return causal_mask, padding_mask

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        cache = one_cache(cache, past_key_values)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        document_starts = _packed_document_starts(position_ids, inputs_embeds.shape[0], attention_mask, cache)
        if position_ids is None:
            past_seen_tokens = cache.get_seq_length(self.config.length_layer_index) if cache is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen_tokens
            position_ids = position_ids.unsqueeze(0)

        causal_mask, padding_mask = self._masks(inputs_embeds, attention_mask, cache, position_ids)
        self.bind_kernels(inputs_embeds.device)

        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)
        for decoder_layer in self.layers:
            hidden_states = decoder_layer(
                hidden_states,
                attention_mask=causal_mask,
                padding_mask=padding_mask,
                position_ids=position_ids,
                cache=cache,
                position_embeddings=position_embeddings,
                document_starts=document_starts,
                **kwargs,
            )
        hidden_states = self.norm(hidden_states)
        return BaseModelOutputWithPast(
            last_hidden_state=hidden_states, **{CACHE_FIELD: cache if use_cache else None}
        )


class AprielH1ForCausalLM(AprielH1PreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: AprielH1Config):
        super().__init__(config)
        self.model = AprielH1Model(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def prepare_inputs_for_generation(
        self, input_ids: torch.LongTensor, *args, inputs_embeds: torch.Tensor | None = None, **kwargs
    ) -> dict:
        """longrope (Phi-3 128k, Phi-4-mini teachers) turns every position by other angles once the sequence is
        longer than ``original_max_position_embeddings``; as transformers' Phi-3 does, the step that crosses it
        drops the cache and recomputes the whole sequence (Mamba states included), so that generate() stays the
        teacher's computation."""
        rope = self.config.rope_parameters or {}
        limit = rope.get("original_max_position_embeddings")
        cache = kwargs.get(CACHE_FIELD)
        if (
            rope.get("rope_type") == "longrope" and limit is not None and cache is not None
            and input_ids.shape[1] >= limit + 1 and cache.get_seq_length(self.config.length_layer_index) <= limit
        ):
            kwargs[CACHE_FIELD] = None
            if GENERATE_TAKES_NEXT_SEQUENCE_LENGTH:
                kwargs["next_sequence_length"] = None
        # inputs_embeds named in the signature: generate() accepts inputs_embeds only where it finds it there
        return super().prepare_inputs_for_generation(input_ids, *args, inputs_embeds=inputs_embeds, **kwargs)

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head = new_embeddings

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=one_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            return_dict=True,  # read by field below, whatever ``config.return_dict`` says; can_return_tuple applies it
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, slice_indices, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)},
        )


class AprielHModel(AprielH1Model):
    """``AprielH1Model`` for configs in the released layout (``model_type: apriel_h``); nothing else differs.

    A class of its own because transformers pairs each config class with one model class by name (``register``,
    also when loading remote code), and a released directory must load under ``AprielHConfig``.
    """

    config_class = AprielHConfig


class AprielHForCausalLM(AprielH1ForCausalLM):
    """``AprielH1ForCausalLM`` for configs in the released layout (``model_type: apriel_h``); nothing else differs."""

    config_class = AprielHConfig


__all__ = ["AprielH1ForCausalLM", "AprielH1Model", "AprielH1PreTrainedModel", "AprielHForCausalLM", "AprielHModel"]

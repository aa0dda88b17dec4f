"""Chunked prefill for the decode engine: one prompt through the model a chunk at a time, straight into its slot.

Why: the model's own forward over a whole prompt holds every layer's activations for every prompt token at once
(about 8 GiB beyond the cache for a 64k prompt at Apriel-15B dims), and a long prefill stalls every sequence that
is decoding meanwhile. Cut into chunks, the activations are bounded by the chunk, and the engine can run decode
steps for the other sequences between two chunks (as vLLM's chunked prefill does).

A chunk of tokens ``[start, end)`` runs through every layer:

- attention layers write the chunk's keys and values into the slot's rows ``[start, end)`` and attend over the
  slot's rows ``[0, end)``, causally aligned at the end (``attend_chunk``: no mask is built, so memory does not
  grow with the length already prefilled);
- Mamba layers continue from the conv window and SSM state the previous chunk left (``AprielH1Mamba.prefill``
  with explicit states), held here in fp32 for the one sequence being prefilled, and copied into the slot once
  the prompt is done (``finish``). The slot's own state cannot hold them meanwhile: a decode step for the other
  sequences updates every row of its batch bucket, running or not;
- the MLP and norms are the layers' own modules.

The result is what one forward over the whole prompt computes (same tokens, fp32 on CPU: the engine's tests).
A Mamba layer can also be cut inside a chunk at given positions (``snapshot_at``), returning its state there:
the prefix cache stores those snapshots at its block boundaries (``prefix_cache``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.bias import causal_lower_right

from ..layer_types import decoder_layers, is_mamba_layer
from ..modeling_apriel_h1 import apply_rotary_pos_emb
from .decode_state import DecodeState

MambaStates = dict[int, tuple[torch.Tensor, torch.Tensor]]  # Mamba layer index -> (conv window, SSM state)


def project_attention(
    attn: nn.Module, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int, kv_heads: int,
    head_dim: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q (rows, heads, n, head_dim) and k (rows, kv_heads, n, head_dim) with the rotary embedding applied, and v
    (rows, n, kv_heads, head_dim), from hidden (rows, n, hidden). The one projection of the engine's decode step
    and of its chunked prefill, so that the two cannot compute different attention inputs."""
    rows, length, _ = hidden.shape
    q = attn.q_proj(hidden).view(rows, length, heads, head_dim)
    k = attn.k_proj(hidden).view(rows, length, kv_heads, head_dim)
    v = attn.v_proj(hidden).view(rows, length, kv_heads, head_dim)
    if hasattr(attn, "q_norm"):  # Qwen3's per-head norms, before the rotation
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)  # partial rotary where configured
    return q, k, v


def attend_chunk(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scaling: float) -> torch.Tensor:
    """Causal attention of a chunk's queries (1, heads, n, head_dim) over keys and values (1, kv_heads, total,
    head_dim) whose last n rows are the chunk's own: query i sees keys [0, total - n + i]. Returns (1, heads, n,
    head_dim).

    The causal diagonal is aligned at the bottom right (``causal_lower_right``), which SDPA's flash and
    memory-efficient kernels take without a mask tensor; each of the query groups that share a KV head runs as
    its own call, so the keys are never repeated over the groups. ``attend_chunk_reference`` is the
    specification."""
    batch, heads, length, head_dim = query.shape
    kv_heads, total = keys.shape[1], keys.shape[2]
    groups = heads // kv_heads
    mask = causal_lower_right(length, total)
    grouped = query.view(batch, kv_heads, groups, length, head_dim)
    outputs = [
        F.scaled_dot_product_attention(grouped[:, :, group], keys, values, attn_mask=mask, scale=scaling)
        for group in range(groups)
    ]
    return torch.stack(outputs, dim=2).view(batch, heads, length, head_dim)


def attend_chunk_reference(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scaling: float
) -> torch.Tensor:
    """``attend_chunk`` written out: repeated KV heads, an explicit mask, softmax in fp32."""
    heads, kv_heads = query.shape[1], keys.shape[1]
    length, total = query.shape[2], keys.shape[2]
    keys = keys.repeat_interleave(heads // kv_heads, dim=1).float()
    values = values.repeat_interleave(heads // kv_heads, dim=1).float()
    scores = query.float() @ keys.transpose(-1, -2) * scaling  # (batch, heads, n, total)
    visible = torch.arange(total)[None, :] <= torch.arange(total - length, total)[:, None]
    scores = scores.masked_fill(~visible.to(scores.device), float("-inf"))
    return (scores.softmax(-1) @ values).to(query.dtype)


class ChunkedPrefill:
    """Prefills one sequence at a time into a slot of ``state``, chunk by chunk; holds its Mamba states between
    chunks (fp32, one sequence: at Apriel-15B dims with 40 Mamba layers, 11 MiB)."""

    def __init__(self, model: nn.Module, state: DecodeState):
        self.model, self.state = model, state
        config = model.config
        self._heads, self._kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.mamba: dict[int, tuple[torch.Tensor, torch.Tensor] | None] = {}

    def begin(self, restored: MambaStates | None = None) -> None:
        """Start a new sequence: from nothing, or from Mamba states at the position its prefill resumes from."""
        self.mamba = {index: None for index in self.state.conv}
        for index, (conv, ssm) in (restored or {}).items():
            self.mamba[index] = (conv.clone(), ssm.to(torch.float32, copy=True))  # never the cache's own memory

    @torch.no_grad()
    def run(
        self, slot: int, tokens: torch.Tensor, start: int, snapshot_at: list[int] | None = None
    ) -> tuple[torch.Tensor, dict[int, MambaStates]]:
        """Prefill ``tokens`` (n,) at positions ``[start, start + n)`` of ``slot``. Returns the final hidden state
        of the last token (1, hidden), after the model's final norm, and the Mamba states after each position of
        ``snapshot_at`` (absolute positions in ``(start, start + n]``), as {position: {layer: (conv, ssm)}}."""
        model, state = self.model, self.state
        length = tokens.shape[0]
        end = start + length
        cuts = sorted({position - start for position in snapshot_at or []} | {length})
        hidden = model.model.embed_tokens(tokens[None])  # (1, n, hidden)
        positions = torch.arange(start, end, device=hidden.device)[None]
        cos, sin = model.model.rotary_emb(hidden, positions)
        snapshots: dict[int, MambaStates] = {start + cut: {} for cut in cuts if start + cut in (snapshot_at or [])}
        for index, layer in enumerate(decoder_layers(model)):
            residual = hidden
            normed = layer.input_layernorm(hidden)
            if is_mamba_layer(layer):
                pieces, first = [], 0
                for cut in cuts:
                    conv, ssm = self.mamba[index] or (None, None)
                    piece, conv, ssm = layer.mixer.prefill(normed[:, first:cut], conv, ssm)
                    self.mamba[index] = (conv, ssm)
                    if start + cut in snapshots:
                        snapshots[start + cut][index] = (conv, ssm)
                    pieces.append(piece)
                    first = cut
                mixed = torch.cat(pieces, dim=1) if len(pieces) > 1 else pieces[0]
            else:
                attn = layer.self_attn
                keys, values = state.keys[index], state.values[index]
                q, k, v = project_attention(attn, normed, cos, sin, self._heads, self._kv_heads, keys.shape[-1])
                keys[slot, start:end] = k[0].transpose(0, 1)
                values[slot, start:end] = v[0]
                out = attend_chunk(
                    q, keys[slot, :end].transpose(0, 1)[None], values[slot, :end].transpose(0, 1)[None], attn.scaling
                )
                mixed = attn.o_proj(out.transpose(1, 2).reshape(1, length, -1))
            hidden = residual + mixed
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return model.model.norm(hidden[:, -1]), snapshots

    def finish(self, slot: int) -> None:
        """Move the finished sequence's Mamba states into its slot."""
        for index, states in self.mamba.items():
            conv, ssm = states
            self.state.conv[index][slot] = conv[0].to(self.state.conv[index].dtype)
            self.state.ssm[index][slot] = ssm[0].to(self.state.ssm[index].dtype)

"""A decode engine for Apriel-H1 hybrids and their transformer teachers: static state, CUDA-graph steps,
continuous batching.

Why: ``generate()`` with a ``DynamicCache`` spends most of each step launching kernels from Python, so a hybrid's
smaller per-step reads never show. Here (after mamba_ssm's ``utils/generation.py`` and gpt-fast):

- ``DecodeState`` holds every tensor in fixed slots (KV only for attention layers, conv + SSM state for Mamba).
- Prefill runs the model's own forward (eager, any prompt length, left-padded batches) and copies the resulting
  KV and Mamba states into the requests' slots.
- One decode step for rows ``0..bucket-1`` (embedding, every layer, sampling, and the bookkeeping of lengths,
  EOS and budgets) is captured as a CUDA graph per batch bucket and replayed; attention reads only each row's
  live keys (``ops.decode_attention``). Without CUDA (or with ``cuda_graphs=False``) the same step runs eagerly.
- Continuous batching: a finished slot takes the next waiting prompt, whose prefill overwrites the slot's state.
- The fused step (CUDA + Triton) runs q/k/v, gate/up and a Mamba mixer's two input projections as one GEMM each
  (``packed_linears``: the modules' weights become views of one packed matrix, no copy is kept), and a Mamba
  layer's conv and state update as one kernel (``ops.triton_kernels.mamba_decode_step``).

Works for any causal LM with the Mistral/Llama layout (``model.model.layers[i].self_attn.{q,k,v,o}_proj``, and
``q_norm``/``k_norm`` where the model has them, as Qwen3 does), so a teacher and its hybrids are measured by the
same code. Reachable as ``DecodeEngine(model).generate_batch(...)``
and through ``model.generate(..., custom_generate=engine_generate)``.
"""

from __future__ import annotations

import importlib.util
import inspect
import time
from collections import deque
from collections.abc import Sequence

import torch
from torch import nn
from transformers import DynamicCache

from .decode_state import DecodeState, decoder_layers, is_mamba_layer
from .modeling_apriel_h1 import apply_rotary_pos_emb
from .ops.decode_attention import resolve_decode_attention
from .packed_linears import LinearGroup
from .sampling import SamplingParams, choose_tokens

SYNC_EVERY = 8  # steps between looks from the host (finished rows, stop strings, refills)
SSM_STATE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _batch_buckets(slots: int) -> list[int]:
    """Row counts a step is captured for: powers of two below ``slots``, and ``slots`` itself."""
    buckets = [1 << i for i in range(slots.bit_length()) if 1 << i < slots]
    return buckets + [slots]


class DecodeEngine:
    """Generates for many prompts at once from fixed slots; see the module docstring for how.

    Args:
        model: a causal LM (``AprielH1ForCausalLM``, or a Mistral / Llama / Qwen2 teacher) in eval mode.
        max_batch_size: slots, i.e. sequences decoded at the same time.
        max_seq_len: prompt + generated tokens of one sequence, at most.
        cuda_graphs: capture the step as CUDA graphs (default: when the model is on CUDA).
        prefill_tokens: padded prompt tokens per prefill forward (bounds the prefill's activation memory).
        attention: force a decode-attention implementation (``"reference"``, ``"triton"``, ``"flash_attn"``).
        fused: fuse the step's element-wise work into Triton kernels (default: on CUDA with triton installed and
            a SiLU-gated MLP); off, every layer runs through the model's own modules.
        ssm_state_dtype: dtype of the Mamba layers' recurrent state in the slots. fp32 (default) keeps the state
            as ``generate()``'s cache does; ``torch.bfloat16`` is what mamba_ssm, vLLM and transformers' Mamba
            caches hold for a bf16 model, and halves the bytes a Mamba layer's step moves (the state is read and
            written every step). Either way the update is computed in fp32 and the output read before rounding.
        pack_projections: with the fused step, run the projections that share an input as one GEMM each. This
            makes the model's q/k/v, gate/up and Mamba input-projection weights views of packed matrices (same
            values, no extra memory, new Parameter objects: build the engine before any optimizer of the model,
            or pass False to leave the model's parameters untouched).
    """

    def __init__(
        self,
        model: nn.Module,
        max_batch_size: int = 8,
        max_seq_len: int = 4096,
        cuda_graphs: bool | None = None,
        prefill_tokens: int = 16384,
        attention: str | None = None,
        fused: bool | None = None,
        pack_projections: bool = True,
        ssm_state_dtype: torch.dtype = torch.float32,
    ):
        if max_batch_size < 1 or max_seq_len < 2:
            raise ValueError(f"max_batch_size ({max_batch_size}) must be >= 1 and max_seq_len ({max_seq_len}) >= 2")
        if ssm_state_dtype not in SSM_STATE_DTYPES:
            raise ValueError(f"ssm_state_dtype is {ssm_state_dtype}; use one of {', '.join(map(str, SSM_STATE_DTYPES))}")
        _check_supported(model)
        _check_rope_fits(model.config, max_seq_len)
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.cuda_graphs = self.device.type == "cuda" if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and self.device.type != "cuda":
            raise ValueError("cuda_graphs=True needs the model on a CUDA device")
        self.prefill_tokens = prefill_tokens
        # transformers 5.24 renamed the forward's cache argument from past_key_values to cache
        self._cache_argument = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.state = DecodeState(model, max_batch_size, max_seq_len, ssm_state_dtype)
        self.attention_name, self._attention = resolve_decode_attention(self.device, attention)
        self.fused = _can_fuse(model, self.device) if fused is None else fused
        self._projections = _packed_projections(model, pack_projections) if self.fused else []
        # -exp(A_log) of every Mamba layer, once: the engine serves frozen weights
        self._A = {
            index: -torch.exp(layer.mixer.A_log.float())
            for index, layer in enumerate(decoder_layers(model)) if is_mamba_layer(layer)
        }
        self.buckets = _batch_buckets(max_batch_size)
        self._graphs: dict[tuple, torch.cuda.CUDAGraph] = {}
        self._graph_pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None
        self._temperature = torch.ones((), device=self.device)
        self._top_p = torch.ones((), device=self.device)
        if hasattr(model.model, "bind_kernels"):
            model.model.bind_kernels(self.device)
        self.capture_seconds = 0.0
        if self.cuda_graphs:
            self._capture(SamplingParams())

    @property
    def max_batch_size(self) -> int:
        return self.state.slots

    @property
    def max_seq_len(self) -> int:
        return self.state.max_len

    # ----------------------------------------------------------------------------------------------- the step
    @torch.no_grad()
    def _step(self, rows: int, params: SamplingParams) -> None:
        """Advance rows 0..rows-1 by one token, entirely on the device (capturable)."""
        self._record(rows, choose_tokens(self._step_logits(rows), params, self._temperature, self._top_p))

    def _step_logits(self, rows: int) -> torch.Tensor:
        """The next-token logits (rows, vocab) of rows 0..rows-1, fp32, writing their new keys, values and Mamba
        states into the slots: the step before sampling, through the fused kernels or the model's modules."""
        state, model = self.state, self.model
        positions = state.lengths[:rows]
        hidden = model.model.embed_tokens(state.last_token[:rows]).unsqueeze(1)  # (rows, 1, hidden)
        cos, sin = model.model.rotary_emb(hidden, positions.unsqueeze(1))
        write_at = positions.clamp(max=state.max_len - 1)
        if self.fused:
            hidden = self._fused_layers(hidden[:, 0], cos[:, 0], sin[:, 0], write_at)
        else:
            hidden = self._module_layers(hidden, cos, sin, write_at)[:, 0]
        return model.lm_head(hidden).float()

    def _module_layers(
        self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, write_at: torch.Tensor
    ) -> torch.Tensor:
        """Every layer through the model's own modules, then the final norm: (rows, 1, hidden) in and out."""
        state = self.state
        rows = hidden.shape[0]
        for index, layer in enumerate(decoder_layers(self.model)):
            residual = hidden
            hidden = layer.input_layernorm(hidden)
            if is_mamba_layer(layer):
                hidden = layer.mixer.step(hidden, state.conv[index][:rows], state.ssm[index][:rows], self._A[index])
            else:
                hidden = self._attention_step(layer.self_attn, index, hidden, cos, sin, write_at)
            hidden = residual + hidden
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return self.model.model.norm(hidden)

    def _fused_layers(
        self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, write_at: torch.Tensor
    ) -> torch.Tensor:
        """The same computation as ``_module_layers`` with the element-wise work fused (``decode_fused``) and the
        projections that share an input packed: each residual add happens inside the next norm. (rows, hidden)
        in and out."""
        from .ops.triton_kernels.decode_fused import add_rms_norm, rotary_to_cache, silu_mul

        state, config = self.state, self.model.config
        rows = hidden.shape[0]
        layers = decoder_layers(self.model)
        norms = [layer.input_layernorm for layer in layers] + [self.model.model.norm]
        normed, residual = add_rms_norm(hidden, norms[0].weight, norms[0].variance_epsilon)
        for index, (layer, (mixer_inputs, gate_up)) in enumerate(zip(layers, self._projections)):
            if is_mamba_layer(layer):
                mixed = self._fused_mamba(layer.mixer, index, mixer_inputs(normed))
            else:
                attn = layer.self_attn
                q, k, v = mixer_inputs(normed)
                head_norms = (attn.q_norm.weight, attn.k_norm.weight, attn.q_norm.variance_epsilon) if hasattr(
                    attn, "q_norm") else ()
                q = rotary_to_cache(
                    q, k, v, cos, sin, write_at, state.keys[index], state.values[index],
                    config.num_attention_heads, state.keys[index].shape[-1], *head_norms,
                )
                out = self._attention(q, state.keys[index], state.values[index], write_at + 1, attn.scaling)
                mixed = attn.o_proj(out.reshape(rows, -1))
            post = layer.post_attention_layernorm
            normed, residual = add_rms_norm(mixed, post.weight, post.variance_epsilon, residual)
            mlp_out = layer.mlp.down_proj(silu_mul(*gate_up(normed)))
            following = norms[index + 1]
            normed, residual = add_rms_norm(mlp_out, following.weight, following.variance_epsilon, residual)
        return normed

    def _fused_mamba(self, mixer: nn.Module, index: int, projected: list[torch.Tensor]) -> torch.Tensor:
        """A Mamba mixer's step from its input projections (``in_proj``, ``dt_in_proj`` outputs): the conv and
        state update in one kernel reading x and B at KV width. Same result as ``mixer.step``."""
        from .ops.triton_kernels.mamba_decode_step import mamba_decode_step

        rows = projected[0].shape[0]
        z, x, B, C = projected[0].split([mixer.d_inner, mixer.d_xb, mixer.d_xb, mixer.d_inner], dim=-1)
        y = mamba_decode_step(
            self.state.conv[index][:rows], self.state.ssm[index][:rows], x, z, mixer.widen_time_step(projected[1]),
            self._A[index], B, C, mixer.D, mixer.dt_proj.bias, mixer.conv1d.weight.squeeze(1), mixer.conv1d.bias,
        )
        return mixer.out_proj(y)

    def _attention_step(
        self, attn: nn.Module, index: int, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
        write_at: torch.Tensor,
    ) -> torch.Tensor:
        """Project the new token, write its key and value at each row's position, attend over the live keys."""
        rows = hidden.shape[0]
        config = self.model.config
        head_dim = self.state.keys[index].shape[-1]
        q = attn.q_proj(hidden).view(rows, 1, config.num_attention_heads, head_dim)
        k = attn.k_proj(hidden).view(rows, 1, config.num_key_value_heads, head_dim)
        v = attn.v_proj(hidden).view(rows, 1, config.num_key_value_heads, head_dim)
        if hasattr(attn, "q_norm"):  # Qwen3's per-head norms, before the rotation
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)  # (rows, heads, 1, head_dim)
        row_index = self.state.row_index[:rows]
        self.state.keys[index][row_index, write_at] = k[:, :, 0]
        self.state.values[index][row_index, write_at] = v[:, 0]
        out = self._attention(
            q[:, :, 0], self.state.keys[index], self.state.values[index], write_at + 1, attn.scaling
        )  # (rows, heads, head_dim)
        return attn.o_proj(out.reshape(rows, 1, -1))

    def _record(self, rows: int, chosen: torch.Tensor) -> None:
        """Store each running row's token, advance its counters, and stop rows that hit EOS or their budget."""
        state = self.state
        active = state.active[:rows]
        token = torch.where(active, chosen, state.last_token[:rows])
        count = state.generated_count[:rows]
        state.generated[state.row_index[:rows], count] = token
        count += active
        state.lengths[:rows] += active
        is_stop = (token[:, None] == state.stop_ids[None, :]).any(dim=-1)
        active &= ~(is_stop | (count >= state.budget[:rows]))
        state.last_token[:rows] = token

    # ---------------------------------------------------------------------------------------------- graphs
    def _capture(self, params: SamplingParams) -> None:
        """Capture one step per batch bucket for this kind of sampling. Only while no request is running: the
        warm-up steps write into every slot."""
        started = time.perf_counter()
        self._set_sampling_values(params)
        for rows in self.buckets:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up: Triton compiles, cuBLAS picks its kernels
                for _ in range(2):
                    self._step(rows, params)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._graph_pool):
                self._step(rows, params)
            self._graphs[(rows, params.graph_key)] = graph
        torch.cuda.synchronize()
        self.state.clear_bookkeeping()
        self.capture_seconds += time.perf_counter() - started

    def _set_sampling_values(self, params: SamplingParams) -> None:
        self._temperature.fill_(params.temperature)
        self._top_p.fill_(params.top_p)

    def run_step(self, rows: int, params: SamplingParams) -> None:
        """One step for the smallest bucket holding ``rows`` rows: a graph replay, or the eager step."""
        bucket = next(b for b in self.buckets if b >= rows)
        if self.cuda_graphs:
            self._graphs[(bucket, params.graph_key)].replay()
        else:
            self._step(bucket, params)

    # ----------------------------------------------------------------------------------------------- prefill
    @torch.no_grad()
    def _prefill(self, slots: list[int], prompts: list[list[int]], budgets: list[int], params: SamplingParams) -> None:
        """Run the prompts through the model's own forward (left-padded, one batch) and move the resulting
        KV and Mamba states into ``slots``; choose each request's first token."""
        state = self.state
        width = max(len(p) for p in prompts)
        ids = torch.zeros(len(prompts), width, dtype=torch.long)
        mask = torch.zeros(len(prompts), width, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt)
            mask[row, width - len(prompt) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1,
            **{self._cache_argument: cache},
        )
        first = choose_tokens(out.logits[:, -1].float(), params, self._temperature, self._top_p)
        slot_index = torch.tensor(slots, device=self.device)
        for index, layer in enumerate(cache.layers):
            if index in state.conv:
                state.conv[index][slot_index] = layer.conv_states[0].to(state.conv[index].dtype)
                state.ssm[index][slot_index] = layer.recurrent_states[0].to(state.ssm[index].dtype)
                continue
            for row, (slot, prompt) in enumerate(zip(slots, prompts)):  # (batch, kv_heads, width, dim) -> slot rows
                state.keys[index][slot, : len(prompt)] = layer.keys[row, :, width - len(prompt) :].transpose(0, 1)
                state.values[index][slot, : len(prompt)] = layer.values[row, :, width - len(prompt) :].transpose(0, 1)
        lengths = torch.tensor([len(p) for p in prompts], device=self.device)
        budget = torch.tensor(budgets, device=self.device)
        state.lengths[slot_index] = lengths
        state.last_token[slot_index] = first
        state.generated[slot_index, 0] = first
        state.generated_count[slot_index] = 1
        state.budget[slot_index] = budget
        is_stop = (first[:, None] == state.stop_ids[None, :]).any(dim=-1)
        state.active[slot_index] = ~is_stop & (budget > 1)

    def _prefill_groups(self, requests: list[int], prompts: Sequence[Sequence[int]]) -> list[list[int]]:
        """Split requests into prefill batches of at most ``prefill_tokens`` padded tokens each."""
        groups, current, width = [], [], 0
        for request in requests:
            new_width = max(width, len(prompts[request]))
            if current and new_width * (len(current) + 1) > self.prefill_tokens:
                groups.append(current)
                current, new_width = [], len(prompts[request])
            current.append(request)
            width = new_width
        return groups + [current] if current else groups

    # --------------------------------------------------------------------------------------------- the loop
    def generate_batch(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        sampling: SamplingParams | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        stop_strings: Sequence[str] | None = None,
        tokenizer=None,
        progress: bool = False,
    ) -> list[list[int]]:
        """Generate for every prompt (token ids, no padding); returns the new tokens of each, in prompt order.

        More prompts than slots is the normal case: a finished sequence's slot takes the next waiting prompt.
        A sequence ends at an EOS id (kept as its last token), after ``max_new_tokens``, or once its text holds
        one of ``stop_strings`` (decoded with ``tokenizer``; the tokens may run a few past the stop string, so
        cut the text at its first occurrence, as lm-eval does).
        """
        params = sampling or SamplingParams()
        self._validate(prompts, max_new_tokens, stop_strings, tokenizer)
        stop_ids = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        state = self.state
        state.clear_bookkeeping()
        state.set_stop_ids(stop_ids)
        if self.cuda_graphs and (self.buckets[0], params.graph_key) not in self._graphs:
            self._capture(params)
        self._set_sampling_values(params)

        results: list[list[int] | None] = [None] * len(prompts)
        waiting = deque(range(len(prompts)))
        running: dict[int, int] = {}  # slot -> request
        checked: dict[int, int] = {}  # slot -> tokens already searched for stop strings
        bar = _progress_bar(len(prompts), progress)
        started, produced = time.perf_counter(), 0
        while waiting or running:
            free = [slot for slot in range(state.slots) if slot not in running]
            admitted = [waiting.popleft() for _ in range(min(len(free), len(waiting)))]
            for group in self._prefill_groups(admitted, prompts):
                slots = [free.pop(0) for _ in group]
                self._prefill(slots, [list(prompts[r]) for r in group], [max_new_tokens] * len(group), params)
                running.update(zip(slots, group))
                checked.update(dict.fromkeys(slots, 0))
            for _ in range(SYNC_EVERY):
                self.run_step(max(running) + 1, params)
            active = state.active.tolist()
            counts = state.generated_count.tolist()
            for slot in list(running):
                done = not active[slot]
                if not done and stop_strings:
                    done = self._hit_stop_string(slot, counts[slot], checked, stop_strings, tokenizer)
                if done:
                    request = running.pop(slot)
                    results[request] = state.generated[slot, : counts[slot]].tolist()
                    state.lengths[slot] = 0  # a free row in a bucket then reads one key, not its old sequence
                    produced += counts[slot]
                    bar.update(1)
                    bar.set_postfix(tokens_per_s=f"{produced / (time.perf_counter() - started):,.0f}")
        bar.close()
        state.active.zero_()
        return results

    def _hit_stop_string(
        self, slot: int, count: int, checked: dict[int, int], stop_strings: Sequence[str], tokenizer
    ) -> bool:
        """Whether the tokens generated since the last look (with some overlap) spell a stop string; if so the
        slot is stopped on the device too."""
        start = max(0, checked[slot] - 16)
        text = tokenizer.decode(self.state.generated[slot, start:count].tolist(), skip_special_tokens=False)
        checked[slot] = count
        if any(stop in text for stop in stop_strings):
            self.state.active[slot] = False
            return True
        return False

    def _validate(self, prompts, max_new_tokens: int, stop_strings, tokenizer) -> None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens is {max_new_tokens}; ask for at least 1 new token")
        if stop_strings and tokenizer is None:
            raise ValueError("stop_strings need the tokenizer that decodes the tokens: pass tokenizer=...")
        for index, prompt in enumerate(prompts):
            if len(prompt) == 0:
                raise ValueError(f"prompt {index} is empty; every prompt needs at least one token")
            if len(prompt) + max_new_tokens > self.max_seq_len:
                raise ValueError(
                    f"prompt {index} has {len(prompt)} tokens and {max_new_tokens} new tokens are asked for, "
                    f"but the engine holds {self.max_seq_len} per sequence: build it with a larger max_seq_len "
                    "or ask for fewer tokens"
                )


def _check_supported(model: nn.Module) -> None:
    config = model.config
    uses_window = getattr(config, "sliding_window", None) is not None
    if uses_window or "sliding_attention" in (getattr(config, "layer_types", None) or []):
        raise ValueError(
            "the decode engine runs full attention only; this model uses a sliding window. Use model.generate()"
        )
    if not hasattr(model, "model") or not hasattr(model.model, "layers"):
        raise ValueError(f"{type(model).__name__} has no model.layers: the engine needs a Mistral/Llama-style causal LM")
    attention = [layer.self_attn for layer in decoder_layers(model) if not is_mamba_layer(layer)]
    if any(not hasattr(attn, "q_proj") for attn in attention):
        raise ValueError(
            f"{type(model).__name__} has fused q/k/v projections (Phi-3's qkv_proj), which the engine does not read; "
            "convert it with 0 Mamba layers (conversion.model.convert_model(model, [])) and decode that"
        )


def _check_rope_fits(config, max_seq_len: int) -> None:
    """longrope (Phi-3 128k, Phi-4-mini) turns every position by other angles once a sequence passes
    ``original_max_position_embeddings`` tokens, and the model then recomputes its whole cache (generate() does,
    as transformers' Phi-3 does); keys already in the engine's slots cannot follow, so sequences stay below."""
    rope = getattr(config, "rope_parameters", None) or {}
    limit = rope.get("original_max_position_embeddings")
    if rope.get("rope_type") == "longrope" and limit is not None and max_seq_len > limit:
        raise ValueError(
            f"this model's longrope rotary changes its angles past {limit} tokens (original_max_position_embeddings) "
            f"and needs its cache recomputed there, which the engine's slots cannot do; build the engine with "
            f"max_seq_len <= {limit}, or use model.generate() for longer sequences"
        )


def _can_fuse(model: nn.Module, device: torch.device) -> bool:
    """The fused step needs Triton on CUDA, a SiLU-gated MLP, RMSNorms that expose their epsilon, and Mamba
    states of a power-of-two size (one Triton block)."""
    states = [layer.mixer.d_state for layer in decoder_layers(model) if is_mamba_layer(layer)]
    return (
        device.type == "cuda"
        and importlib.util.find_spec("triton") is not None
        and getattr(model.config, "hidden_act", None) == "silu"
        and hasattr(model.model.norm, "variance_epsilon")
        and all(size & (size - 1) == 0 for size in states)
    )


def _packed_projections(model: nn.Module, pack: bool = True) -> list[tuple[LinearGroup, LinearGroup]]:
    """Per layer, the mixer's input projections (q/k/v, or a Mamba mixer's ``in_proj`` and ``dt_in_proj``) and
    the MLP's gate/up, each packed into one GEMM where the modules allow and ``pack`` asks (``packed_linears``)."""
    projections = []
    for layer in decoder_layers(model):
        if is_mamba_layer(layer):
            mixer_inputs = LinearGroup([layer.mixer.in_proj, layer.mixer.dt_in_proj], pack)
        else:
            attn = layer.self_attn
            mixer_inputs = LinearGroup([attn.q_proj, attn.k_proj, attn.v_proj], pack)
        projections.append((mixer_inputs, LinearGroup([layer.mlp.gate_proj, layer.mlp.up_proj], pack)))
    return projections


def _progress_bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="generating", unit="seq", disable=not enabled)

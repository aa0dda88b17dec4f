"""A decode engine for Apriel-H1 hybrids and their transformer teachers: static state, CUDA-graph steps,
continuous batching.

Why: ``generate()`` with a ``DynamicCache`` spends most of each step launching kernels from Python, so a hybrid's
smaller per-step reads never show. Here (after mamba_ssm's ``utils/generation.py`` and gpt-fast):

- ``DecodeState`` holds every tensor in fixed slots (KV only for attention layers, conv + SSM state for Mamba).
- Prefill: prompts that fit one chunk run through the model's own forward (eager, left-padded batches of up
  to ``prefill_chunk_size`` tokens), whose KV and Mamba states are copied into the requests' slots; a longer
  prompt is prefilled a chunk at a time straight into its slot (``chunked_prefill``), so its activations are
  bounded by the chunk. Each pass of the loop does one such piece of prefill, then decode steps for the running
  sequences: a long prompt never stalls them for its whole prefill (as vLLM's chunked prefill interleaves).
- With ``prefix_cache_blocks``, prompts that share a prefix prefill it once (``prefix_cache``: KV blocks and
  Mamba snapshots at block boundaries); every prompt then takes the chunked path, which stores its blocks.
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
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache

from ..layer_types import decoder_layers, is_mamba_layer
from ..ops.decode_attention import resolve_decode_attention
from ..transformers_compat import cache_argument
from .chunked_prefill import ChunkedPrefill, project_attention
from .decode_state import DecodeState
from .packed_linears import LinearGroup
from .prefix_cache import ROOT, PrefixCache
from .sampling import SamplingParams, choose_tokens

SYNC_EVERY = 8  # steps between looks from the host (finished rows, stop strings, refills)
SSM_STATE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass
class _Prefill:
    """A request whose prompt is being prefilled into ``slot``: ``done`` tokens so far; ``parent`` is the last
    prefix-cache block of its prompt (None once the cache could not take one: later blocks cannot chain)."""

    request: int
    slot: int
    prompt: list[int]
    done: int = 0
    started: bool = False
    parent: int | None = ROOT


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
        prefill_chunk_size: prompt tokens one prefill forward takes (default 4096), which bounds the prefill's
            activation memory: a longer prompt is prefilled in chunks of this many tokens, shorter ones are
            batched up to this many (padded) tokens, and the running sequences take their decode steps between
            two such forwards. Smaller chunks stall decoding sequences less and hold less memory; larger ones
            run the GEMMs a little more efficiently. Same tokens whatever the size.
        prefix_cache_blocks: blocks of the prefix cache (0, the default: none). Each holds ``prefix_block_size``
            tokens of KV and one Mamba snapshot: ``prefix_cache.bytes_per_block(model, prefix_block_size,
            ssm_state_dtype)`` bytes, allocated up front beside the slots, to count in the memory budget.
        prefix_block_size: tokens per prefix-cache block (default 512): a shared prefix is reused in whole
            blocks (see ``prefix_cache`` for the trade-off).
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
        prefill_chunk_size: int = 4096,
        attention: str | None = None,
        fused: bool | None = None,
        pack_projections: bool = True,
        ssm_state_dtype: torch.dtype = torch.float32,
        prefix_cache_blocks: int = 0,
        prefix_block_size: int = 512,
    ):
        _check_sizes(prefill_chunk_size=prefill_chunk_size, prefix_cache_blocks=prefix_cache_blocks,
                     prefix_block_size=prefix_block_size)
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
        self.prefill_chunk_size = prefill_chunk_size
        self._cache_argument = cache_argument(model.forward)
        self.state = DecodeState(model, max_batch_size, max_seq_len, ssm_state_dtype)
        self._chunks = ChunkedPrefill(model, self.state)
        self._batched_last = False  # whether the last piece of prefill was a batch of short prompts
        self.prefix_cache = (
            PrefixCache(model, prefix_cache_blocks, prefix_block_size, ssm_state_dtype) if prefix_cache_blocks else None
        )
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
        self.first_token_seconds: list[float] = []  # of the last generate_batch call, per prompt
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
        from ..ops.triton_kernels.decode_fused import add_rms_norm, rotary_to_cache, silu_mul

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
        from ..ops.triton_kernels.mamba_decode_step import mamba_decode_step

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
        q, k, v = project_attention(  # (rows, heads, 1, head_dim), (rows, kv_heads, 1, head_dim), (rows, 1, ...)
            attn, hidden, cos, sin, config.num_attention_heads, config.num_key_value_heads,
            self.state.keys[index].shape[-1],
        )
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
        self._start_decoding(slots, first, [len(p) for p in prompts], budgets)

    def _start_decoding(self, slots: list[int], first: torch.Tensor, lengths: list[int], budgets: list[int]) -> None:
        """Hand prefilled slots to the decode step: their lengths, first tokens and budgets."""
        state = self.state
        slot_index = torch.tensor(slots, device=self.device)
        budget = torch.tensor(budgets, device=self.device)
        state.lengths[slot_index] = torch.tensor(lengths, device=self.device)
        state.last_token[slot_index] = first
        state.generated[slot_index, 0] = first
        state.generated_count[slot_index] = 1
        state.budget[slot_index] = budget
        is_stop = (first[:, None] == state.stop_ids[None, :]).any(dim=-1)
        state.active[slot_index] = ~is_stop & (budget > 1)

    def _chunked(self, prompt: Sequence[int]) -> bool:
        """Whether a prompt is prefilled chunk by chunk into its slot (else batched through the model's forward)."""
        return self.prefix_cache is not None or len(prompt) > self.prefill_chunk_size

    def _advance_prefill(self, queue: list[_Prefill], max_new_tokens: int, params: SamplingParams) -> list[_Prefill]:
        """One piece of prefill, at most ``prefill_chunk_size`` tokens, and the requests it finished (their slots
        now decode): a batch of queued prompts that fit one chunk, or the next chunk of the first prompt
        prefilled in chunks. The two take turns while both wait (short prompts first: each costs one forward),
        so neither starves the other. Chunked prompts keep their order, so a prompt's prefix-cache lookup sees
        every block the prompts before it stored."""
        chunked = [item for item in queue if self._chunked(item.prompt)]
        batch, width = [], 0
        for item in [] if chunked and self._batched_last else queue:
            if item in chunked:
                continue
            width = max(width, len(item.prompt))
            if batch and width * (len(batch) + 1) > self.prefill_chunk_size:
                break
            batch.append(item)
        self._batched_last = bool(batch)
        if batch:
            self._prefill([item.slot for item in batch], [item.prompt for item in batch],
                          [max_new_tokens] * len(batch), params)
        else:
            batch = [chunked[0]] if self._prefill_chunk(chunked[0], max_new_tokens, params) else []
        for item in batch:
            queue.remove(item)
        return batch

    @torch.no_grad()
    def _prefill_chunk(self, item: _Prefill, max_new_tokens: int, params: SamplingParams) -> bool:
        """Prefill the next chunk of ``item``'s prompt into its slot (its first chunk resumes from the prefix
        cache where the cache holds the prompt's start); returns whether the prompt is done."""
        cache, state = self.prefix_cache, self.state
        if not item.started:
            restored = None
            chain = cache.lookup(item.prompt) if cache is not None else []
            if chain:
                restored = cache.restore(chain, state.keys, state.values, item.slot)
                item.done, item.parent = len(chain) * cache.block_size, chain[-1]
            self._chunks.begin(restored)
            item.started = True
        start = item.done
        end = min(start + self.prefill_chunk_size, len(item.prompt))
        blocks_end = [] if cache is None else list(range(start // cache.block_size * cache.block_size
                                                         + cache.block_size, end + 1, cache.block_size))
        tokens = torch.tensor(item.prompt[start:end], device=self.device)
        hidden, snapshots = self._chunks.run(item.slot, tokens, start, blocks_end)
        for block_end in blocks_end:
            if item.parent is None:
                break
            rows = slice(block_end - cache.block_size, block_end)
            item.parent = cache.add(
                item.parent, item.prompt[rows], {i: k[item.slot, rows] for i, k in state.keys.items()},
                {i: v[item.slot, rows] for i, v in state.values.items()}, snapshots[block_end],
            )
        item.done = end
        # a decode step for the other slots also writes this (idle) row's next position: the next chunk's first
        state.lengths[item.slot] = end
        if end < len(item.prompt):
            return False
        self._chunks.finish(item.slot)
        first = choose_tokens(self.model.lm_head(hidden).float(), params, self._temperature, self._top_p)
        self._start_decoding([item.slot], first, [end], [max_new_tokens])
        return True

    def prefill(self, prompt: Sequence[int], slot: int = 0, sampling: SamplingParams | None = None) -> int:
        """Prefill one prompt into ``slot`` as ``generate_batch`` would (in chunks when it is longer than
        ``prefill_chunk_size``; from and into the prefix cache when there is one) and return its first token. The
        slot is left idle. For timing a prefill alone, and for filling the prefix cache ahead of requests."""
        params = sampling or SamplingParams()
        self._validate([prompt], 1, None, None)
        if not 0 <= slot < self.state.slots:
            raise ValueError(f"slot {slot} does not exist; the engine has slots 0 to {self.state.slots - 1}")
        self._set_sampling_values(params)
        queue = [_Prefill(0, slot, list(prompt))]
        while queue:
            self._advance_prefill(queue, 1, params)
        return int(self.state.last_token[slot])

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
        cut the text at its first occurrence, as lm-eval does). Afterwards ``first_token_seconds`` holds each
        prompt's time to first token: seconds from the call until its prefill had chosen the first token.
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
        self.first_token_seconds = [0.0] * len(prompts)
        waiting = deque(range(len(prompts)))
        prefilling: list[_Prefill] = []  # admitted to a slot, prompt not fully prefilled yet
        running: dict[int, int] = {}  # slot -> request
        checked: dict[int, int] = {}  # slot -> tokens already searched for stop strings
        bar = _progress_bar(len(prompts), progress)
        started, produced = time.perf_counter(), 0
        while waiting or prefilling or running:
            busy = set(running) | {item.slot for item in prefilling}
            for slot in [slot for slot in range(state.slots) if slot not in busy][: len(waiting)]:
                request = waiting.popleft()
                prefilling.append(_Prefill(request, slot, list(prompts[request])))
            finished = self._advance_prefill(prefilling, max_new_tokens, params) if prefilling else []
            if finished and self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # the first tokens exist: time them
            for item in finished:
                running[item.slot] = item.request
                checked[item.slot] = 0
                self.first_token_seconds[item.request] = time.perf_counter() - started
            if not running:
                continue
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
            if len(prompt) >= self.max_seq_len:
                raise ValueError(
                    f"prompt {index} has {len(prompt)} tokens; the engine's max_seq_len ({self.max_seq_len}) must "
                    "hold it and the new tokens: build the engine with max_seq_len >= the longest prompt + the new "
                    "tokens, or shorten the prompt"
                )
            if len(prompt) + max_new_tokens > self.max_seq_len:
                raise ValueError(
                    f"prompt {index} has {len(prompt)} tokens and {max_new_tokens} new tokens are asked for, "
                    f"but the engine holds {self.max_seq_len} per sequence: build it with a larger max_seq_len "
                    "or ask for fewer tokens"
                )


_SIZES = {  # argument: (least value, what it must be)
    "prefill_chunk_size": (1, "a positive number of tokens per prefill forward (the default is 4096)"),
    "prefix_cache_blocks": (0, "0 (no prefix cache) or a positive number of blocks (prefix_cache.bytes_per_block "
                               "says what one costs)"),
    "prefix_block_size": (1, "a positive number of tokens per prefix-cache block (the default is 512)"),
}


def _check_sizes(**sizes: int) -> None:
    """Refuse sizes that cannot work, naming the argument and what to pass instead."""
    for name, value in sizes.items():
        least, meaning = _SIZES[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} is {value!r}; it must be {meaning}")


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

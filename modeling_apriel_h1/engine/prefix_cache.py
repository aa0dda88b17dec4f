"""A prefix cache for the decode engine: requests that share a prefix (a system prompt, few-shot examples, a
document asked many questions) prefill it once.

What is kept, per block of ``block_size`` prompt tokens: the keys and values of every attention layer for the
block's tokens, and, for every Mamba layer, a snapshot of its conv window and SSM state after the block's last
token. A Mamba layer keeps no per-token state, so a prefill can resume only where a snapshot was taken: after a
whole number of blocks. Blocks are found as vLLM finds them: by their tokens and the block before them (a chain
from the prompt's start), so a hit is the longest run of whole blocks the prompt shares with an earlier one.

Granularity: one snapshot per block, blocks of 512 tokens by default. A snapshot costs a whole Mamba state per
Mamba layer whatever the block's length (at Apriel-15B dims 288 KiB a layer: fp32 state 4096 x 16 plus the conv
window; 11.3 MiB for H1-40's 40 layers, 8.4 MiB for H1-30's 30), against 4 KiB of KV per token per attention
layer (2 MiB for 512 tokens of one layer). At 512 tokens the snapshots add 0.56x the KV of H1-40's 10 attention
layers to each block (0.21x for H1-30's 20), and a prompt recomputes at most 511 tokens past its shared prefix
(an eighth of a 4k prefix at worst); at 64-token blocks they would cost 4.5x H1-40's KV, mostly for states no
request resumes from. Sparser snapshots (every k blocks) would save memory but make a prefix that ends between
two of them recompute up to k blocks; a block boundary is where any two prompts can diverge, so every block
gets one. A transformer teacher has no Mamba layer: its blocks are KV only.
``bytes_per_block`` gives the exact cost for a model.

Memory: the blocks live in one pool allocated up front (``blocks`` of them), beside the decode slots, and count
in the serving budget (``bytes_per_block`` x blocks). A hit copies the blocks' KV into the request's slot (the
decode step reads each slot's KV as one contiguous run; it is not paged) and the last block's snapshot into the
prefill's Mamba states. When the pool is full, the least recently used block that no other block continues is
evicted (a block is touched each time a prompt hits or adds it).

Snapshots hold the SSM state in the engine's ``ssm_state_dtype``: with the default fp32, a prefill that resumes
from the cache computes exactly what it would have computed from scratch.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from .decode_state import bytes_per_sequence, slot_tensors

ROOT = -1  # the parent of a prompt's first block

MambaStates = dict[int, tuple[torch.Tensor, torch.Tensor]]


def bytes_per_block(model: nn.Module, block_size: int, ssm_dtype: torch.dtype = torch.float32) -> int:
    """Bytes one cached block takes (KV of its tokens + one Mamba snapshot), to size the pool from a budget: a
    block holds what a decode slot of ``block_size`` tokens holds."""
    return bytes_per_sequence(model, block_size, ssm_dtype)


class PrefixCache:
    """``blocks`` cached blocks of ``block_size`` tokens for ``model``; see the module docstring."""

    def __init__(self, model: nn.Module, blocks: int, block_size: int, ssm_dtype: torch.dtype = torch.float32):
        if blocks < 1 or block_size < 1:
            raise ValueError(f"a prefix cache needs at least one block of at least one token (got {blocks} blocks "
                             f"of {block_size} tokens)")
        self.device = next(model.parameters()).device
        self.blocks, self.block_size = blocks, block_size
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.conv: dict[int, torch.Tensor] = {}
        self.ssm: dict[int, torch.Tensor] = {}
        for kind, index, shape, dtype in slot_tensors(model, block_size, ssm_dtype):
            getattr(self, kind)[index] = torch.zeros(blocks, *shape, device=self.device, dtype=dtype)
        self._find: dict[tuple[int, tuple[int, ...]], int] = {}  # (parent block, its tokens) -> block
        self._key: dict[int, tuple[int, tuple[int, ...]]] = {}  # block -> its key in _find
        self._children = [0] * blocks
        self._recent: OrderedDict[int, None] = OrderedDict()  # blocks in use, least recently used first
        self._free = list(range(blocks - 1, -1, -1))
        self.hits = self.hit_tokens = self.evictions = 0

    def bytes(self) -> int:
        tensors = [*self.keys.values(), *self.values.values(), *self.conv.values(), *self.ssm.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def __len__(self) -> int:
        return len(self._key)

    def lookup(self, prompt: Sequence[int]) -> list[int]:
        """The cached blocks that begin ``prompt``, in order, leaving at least its last token to compute (its
        logits choose the first new token). Touches them."""
        chain, parent = [], ROOT
        for start in range(0, len(prompt) - self.block_size, self.block_size):
            block = self._find.get((parent, tuple(prompt[start : start + self.block_size])))
            if block is None:
                break
            chain.append(block)
            parent = block
        for block in reversed(chain):  # the first block ends most recent: a block outlives those continuing it
            self._recent.move_to_end(block)
        if chain:
            self.hits += 1
            self.hit_tokens += len(chain) * self.block_size
        return chain

    def restore(self, chain: list[int], keys: dict[int, torch.Tensor], values: dict[int, torch.Tensor],
                slot: int) -> MambaStates:
        """Copy the chain's KV into rows ``[0, len(chain) * block_size)`` of ``slot`` (``keys``/``values``: the
        decode state's, per attention layer) and return the Mamba states after its last block (1-row tensors)."""
        tokens = len(chain) * self.block_size
        index = torch.tensor(chain, device=self.device)
        for layer in self.keys:
            keys[layer][slot, :tokens] = self.keys[layer][index].flatten(0, 1)
            values[layer][slot, :tokens] = self.values[layer][index].flatten(0, 1)
        last = chain[-1]
        return {layer: (self.conv[layer][last : last + 1], self.ssm[layer][last : last + 1]) for layer in self.conv}

    def add(self, parent: int, tokens: Sequence[int], keys: dict[int, torch.Tensor], values: dict[int, torch.Tensor],
            mamba: MambaStates) -> int | None:
        """Cache the block of ``tokens`` that follows block ``parent`` (``ROOT`` for a prompt's first): its KV
        (per attention layer, (block_size, kv_heads, head_dim)) and the Mamba states after it. Returns the block
        (the one already cached if any), or None when every block is needed by others (nothing evictable)."""
        key = (parent, tuple(tokens))
        block = self._find.get(key)
        if block is None:
            block = self._take(protect=parent)
            if block is None:
                return None
            for layer in self.keys:
                self.keys[layer][block] = keys[layer]
                self.values[layer][block] = values[layer]
            for layer, (conv, ssm) in mamba.items():
                self.conv[layer][block] = conv[0]
                self.ssm[layer][block] = ssm[0].to(self.ssm[layer].dtype)
            self._find[key], self._key[block] = block, key
            if parent != ROOT:
                self._children[parent] += 1
        self._recent[block] = None
        self._recent.move_to_end(block)
        if parent != ROOT:
            self._recent.move_to_end(parent)
        return block

    def _take(self, protect: int) -> int | None:
        """A free block, or the least recently used one that no cached block continues (evicted)."""
        if self._free:
            return self._free.pop()
        victim = next((b for b in self._recent if self._children[b] == 0 and b != protect), None)
        if victim is None:
            return None
        del self._recent[victim]
        parent, _ = key = self._key.pop(victim)
        del self._find[key]
        if parent != ROOT:
            self._children[parent] -= 1
        self.evictions += 1
        return victim


"""Next-token choice for the decode engine: greedy, or sampling with temperature, top-k and top-p.

Written without host synchronisation (no ``.item()``, no ``torch.multinomial``) so that it runs inside a captured
CUDA graph: sampling draws ``argmax(p / e)`` with ``e`` exponential, which picks token ``i`` with probability
``p_i`` (the exponential-race form of the Gumbel trick). The filters keep the tokens transformers' own
``TopKLogitsWarper`` / ``TopPLogitsWarper`` keep, which ``tests/decoding/test_sampling.py`` checks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen. ``top_k = 0`` and ``top_p = 1.0`` switch those filters off."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature is {self.temperature}; it must be > 0 (use do_sample=False for greedy)")
        if self.top_k < 0:
            raise ValueError(f"top_k is {self.top_k}; use 0 to switch it off or a positive count")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p is {self.top_p}; it must be in (0, 1]")

    @property
    def graph_key(self) -> tuple[bool, int, bool]:
        """What changes the captured computation (temperature and the top-p value are read from tensors)."""
        if not self.do_sample:
            return (False, 0, False)
        return (True, self.top_k, self.top_p < 1)


def filter_logits(logits: torch.Tensor, top_k: int, top_p: torch.Tensor | None) -> torch.Tensor:
    """logits (rows, vocab) with every token outside the top-k and outside the top-p nucleus set to -inf.

    The nucleus is the smallest set of most likely tokens whose probability reaches ``top_p``; the most likely
    token always stays.
    """
    if top_k > 0:
        kth_largest = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p is not None:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # probability of the more likely tokens
        drop_sorted = mass_before >= top_p
        drop_sorted[:, 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def choose_tokens(
    logits: torch.Tensor, params: SamplingParams, temperature: torch.Tensor, top_p: torch.Tensor
) -> torch.Tensor:
    """(rows,) next tokens from fp32 logits (rows, vocab). ``temperature`` and ``top_p`` are 0-d tensors holding
    ``params``' values, so that a captured graph reads the values of the call that replays it."""
    if not params.do_sample:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits / temperature, params.top_k, top_p if params.top_p < 1 else None)
    probs = logits.softmax(dim=-1)
    race = torch.empty_like(probs).exponential_()
    return (probs / race).argmax(dim=-1)

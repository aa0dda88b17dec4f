"""Distillation losses between a student's and a teacher's next-token distributions.

Apriel-H1 distils with the reverse KL, KL(student || teacher) at temperature 1 (paper eq. 5); forward KL and
the generalised Jensen-Shannon divergence of GKD are kept as options for comparison.

Memory is the problem this module solves. A real teacher has a 131k vocabulary and trains on 16k-token
sequences: one fp32 logit tensor of one sequence is 8.6 GB, and autograd over both models' logits keeps
several of them alive. :class:`ChunkedDistillation` never builds them: it takes both models' final hidden
states and LM-head weights, projects a chunk of tokens at a time, and computes the chunk's gradient with
respect to the student's hidden states and LM head right there (the fused-linear-loss approach of Liger
Kernel), so nothing of the chunk outlives it and the backward pass is a multiply by the incoming scalar.
Peak memory is one chunk's logits instead of the whole sequence's, and no projection is recomputed.

:func:`divergence_from_log_probs` is the single definition of each divergence; the chunked path differentiates that
same function on each chunk, so chunked and unchunked agree by construction (and a test checks it).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

LOSS_KINDS = ("reverse_kl", "forward_kl", "jsd")
MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")  # what a batch passes to the decoder
HeadWeights = tuple[torch.Tensor, torch.Tensor | None]  # an LM head's (weight (V, H), bias (V,) or None)


def final_hidden_states(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(batch, seq - 1, hidden): the decoder's last hidden states at the positions that predict a next token (the
    last position predicts none), what the LM head projects to score ``labels``. One forward of the decoder
    without a cache; of ``batch`` only ``MODEL_INPUTS`` are passed."""
    inputs = {key: batch[key] for key in MODEL_INPUTS if key in batch}
    return model.get_decoder()(**inputs, use_cache=False).last_hidden_state[:, :-1]


def log_probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """fp32 log-softmax of ``logits / temperature`` over the vocabulary."""
    logits = logits.float()
    if temperature != 1.0:  # skipping the division at temperature 1 saves one vocab-sized temporary
        logits = logits / temperature
    return F.log_softmax(logits, dim=-1)


def divergence_from_log_probs(
    log_p_student: torch.Tensor, log_p_teacher: torch.Tensor, kind: str, beta: float = 0.5
) -> torch.Tensor:
    """Per-token divergence (tokens, vocab) -> (tokens,) between two log-distributions.

    ``reverse_kl``: KL(p_s || p_t); ``forward_kl``: KL(p_t || p_s); ``jsd``: beta KL(p_t || m) + (1 - beta)
    KL(p_s || m) with m = beta p_t + (1 - beta) p_s (GKD's generalised JSD; beta in (0, 1)).
    """
    if kind == "reverse_kl":
        return F.kl_div(log_p_teacher, log_p_student, reduction="none", log_target=True).sum(-1)
    if kind == "forward_kl":
        return F.kl_div(log_p_student, log_p_teacher, reduction="none", log_target=True).sum(-1)
    if kind == "jsd":
        if not 0.0 < beta < 1.0:
            raise ValueError(f"The JSD loss needs 0 < beta < 1, got beta={beta}; forward_kl/reverse_kl are the ends.")
        log_mixture = torch.logaddexp(log_p_teacher + math.log(beta), log_p_student + math.log1p(-beta))
        kl_teacher = F.kl_div(log_mixture, log_p_teacher, reduction="none", log_target=True).sum(-1)
        kl_student = F.kl_div(log_mixture, log_p_student, reduction="none", log_target=True).sum(-1)
        return beta * kl_teacher + (1 - beta) * kl_student
    raise ValueError(f"Unknown distillation loss {kind!r}; choose one of {LOSS_KINDS}.")


def token_divergence(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str, beta: float = 0.5, temperature: float = 1.0
) -> torch.Tensor:
    """Per-token divergence (tokens, vocab) -> (tokens,) in fp32 between the two models' softmax(logits / T)."""
    log_p_student, log_p_teacher = log_probs(student_logits, temperature), log_probs(teacher_logits, temperature)
    return divergence_from_log_probs(log_p_student, log_p_teacher, kind, beta)


class DistillationSums(NamedTuple):
    """Sums over the supervised tokens of a batch; divide by ``num_tokens`` (or the batch's global token
    count under gradient accumulation) for per-token values. Only ``divergence`` carries a gradient; the
    statistics are None where a loss backend does not compute them (``recipes.training.kd_loss_liger``).
    (A tuple, so that DDP finds the tensors in it when it is returned from a wrapped forward.)"""

    divergence: torch.Tensor
    student_cross_entropy: torch.Tensor | None
    top1_agreements: torch.Tensor | None
    num_tokens: int


def _statistics(
    student_log_probs: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's CE on the labels (from its temperature-1 log-probs) and how often both models' top-1
    tokens agree."""
    cross_entropy = -student_log_probs.gather(-1, labels.unsqueeze(-1)).sum()
    agreements = (student_log_probs.argmax(-1) == teacher_logits.argmax(-1)).sum()
    return cross_entropy, agreements


def _project(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """LM-head logits of a chunk, (chunk, hidden) -> (chunk, vocab), in the head's dtype as the model computes them."""
    return F.linear(hidden, weight, bias)


def _chunk(
    student_hidden: torch.Tensor,
    student_head: HeadWeights,
    teacher_hidden: torch.Tensor,
    teacher_head: HeadWeights,
    labels: torch.Tensor,
    kind: str,
    beta: float,
    temperature: float,
    needs_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Divergence sum, CE sum and top-1 agreements of one chunk, and the gradient of the divergence sum with
    respect to the chunk's student logits (None when no gradient is needed). A function of its own so that
    the chunk's vocab-sized temporaries are freed when it returns, before the next chunk allocates its own."""
    student_logits = _project(student_hidden, *student_head)
    teacher_logits = _project(teacher_hidden, *teacher_head)
    with torch.enable_grad():
        logits = student_logits.detach().requires_grad_(needs_grad)
        log_p_student = log_probs(logits, temperature)
        divergence = divergence_from_log_probs(log_p_student, log_probs(teacher_logits, temperature), kind, beta).sum()
    student_log_probs = log_p_student.detach() if temperature == 1.0 else log_probs(student_logits)
    cross_entropy, agreements = _statistics(student_log_probs, teacher_logits, labels)
    grad_logits = torch.autograd.grad(divergence, logits)[0] if needs_grad else None
    return divergence.detach(), cross_entropy, agreements, grad_logits


class ChunkedDistillation(torch.autograd.Function):
    """Divergence sum over tokens from hidden states and LM heads, one chunk of tokens at a time.

    Inputs are the supervised positions only: ``student_hidden`` (tokens, H_s), ``teacher_hidden``
    (tokens, H_t), each model's head ``weight`` (V, H) and optional ``bias`` (V,), and ``labels`` (tokens,).
    The gradient flows to the student's hidden states and head; the teacher's inputs get none.
    """

    @staticmethod
    def forward(
        ctx,
        student_hidden: torch.Tensor,
        student_weight: torch.Tensor,
        student_bias: torch.Tensor | None,
        teacher_hidden: torch.Tensor,
        teacher_weight: torch.Tensor,
        teacher_bias: torch.Tensor | None,
        labels: torch.Tensor,
        kind: str,
        beta: float,
        temperature: float,
        chunk_size: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        needs_hidden_grad, needs_weight_grad, needs_bias_grad = ctx.needs_input_grad[:3]
        grad_hidden = torch.zeros_like(student_hidden) if needs_hidden_grad else None
        # Accumulated over chunks in fp32 so a bf16 head does not lose the small per-chunk contributions.
        grad_weight = torch.zeros_like(student_weight, dtype=torch.float32) if needs_weight_grad else None
        grad_bias = torch.zeros_like(student_bias, dtype=torch.float32) if needs_bias_grad else None
        divergence = student_hidden.new_zeros((), dtype=torch.float32)
        cross_entropy = divergence.clone()
        agreements = torch.zeros((), dtype=torch.long, device=student_hidden.device)

        for start in range(0, student_hidden.shape[0], chunk_size):
            chunk = slice(start, start + chunk_size)
            hidden = student_hidden[chunk]
            chunk_divergence, chunk_cross_entropy, chunk_agreements, grad_logits = _chunk(
                hidden, (student_weight, student_bias), teacher_hidden[chunk], (teacher_weight, teacher_bias),
                labels[chunk], kind, beta, temperature, needs_hidden_grad or needs_weight_grad or needs_bias_grad,
            )
            divergence += chunk_divergence
            cross_entropy += chunk_cross_entropy
            agreements += chunk_agreements
            if grad_logits is None:
                continue
            if needs_bias_grad:
                grad_bias += grad_logits.sum(0)
            grad_logits = grad_logits.to(student_weight.dtype)
            if needs_hidden_grad:
                grad_hidden[chunk] = grad_logits @ student_weight
            if needs_weight_grad:
                grad_weight += grad_logits.t() @ hidden

        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (student_hidden.dtype, student_weight.dtype, None if student_bias is None else student_bias.dtype)
        ctx.mark_non_differentiable(cross_entropy, agreements)
        return divergence, cross_entropy, agreements

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_divergence: torch.Tensor, *_unused: torch.Tensor):
        # Scaled in place: the weight's fp32 gradient is the size of the LM head, and a copy would be one more.
        scaled = [
            None if grad is None else grad.mul_(grad_divergence).to(dtype)
            for grad, dtype in zip(ctx.saved_tensors, ctx.dtypes)
        ]
        return *scaled, *([None] * 8)


def chunked_distillation_sums(
    student_hidden: torch.Tensor,
    student_head: HeadWeights,
    teacher_hidden: torch.Tensor,
    teacher_head: HeadWeights,
    labels: torch.Tensor,
    kind: str = "reverse_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    chunk_size: int = 2048,
    ignore_index: int = -100,
) -> DistillationSums:
    """Distillation sums for next-token prediction, never materialising either model's full logits.

    ``student_hidden``/``teacher_hidden`` are the models' final hidden states (batch, seq, H), the heads
    their LM heads' (weight, bias), and ``labels``
    (batch, seq) the shifted targets: position t is scored on ``labels[:, t]``. Positions whose label is
    ``ignore_index`` are dropped before any projection.
    """
    if kind not in LOSS_KINDS:
        raise ValueError(f"Unknown distillation loss {kind!r}; choose one of {LOSS_KINDS}.")
    supervised = labels != ignore_index
    teacher_weight, teacher_bias = teacher_head
    divergence, cross_entropy, agreements = ChunkedDistillation.apply(
        student_hidden[supervised],
        *student_head,
        teacher_hidden[supervised].detach(),
        teacher_weight.detach(),
        None if teacher_bias is None else teacher_bias.detach(),
        labels[supervised],
        kind,
        beta,
        temperature,
        chunk_size,
    )
    return DistillationSums(divergence, cross_entropy, agreements, int(supervised.sum()))


def distillation_sums_from_logits(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    kind: str = "reverse_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    ignore_index: int = -100,
) -> DistillationSums:
    """The same sums from full logits (batch, seq, V): the plain autograd path, for reference and benchmarks."""
    supervised = labels != ignore_index
    student_logits, teacher_logits = student_logits[supervised], teacher_logits[supervised].detach()
    divergence = token_divergence(student_logits, teacher_logits, kind, beta, temperature).sum()
    with torch.no_grad():
        cross_entropy, agreements = _statistics(log_probs(student_logits), teacher_logits, labels[supervised])
    return DistillationSums(divergence, cross_entropy, agreements, int(supervised.sum()))

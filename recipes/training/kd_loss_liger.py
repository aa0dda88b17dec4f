"""The distillation loss through liger-kernel's fused linear JSD, an opt-in alternative to ``recipes.training.kd_loss``.

Why: at Apriel-15B's vocabulary and width, liger's loss alone peaks 3.6-6.7 GiB lower than our chunked loss and
runs 13% faster at 16k tokens (benchmarks/RESULTS.md, distillation step), which can let more layers go unchecked at 16k.
What it does not give: the student's cross-entropy and the top-1 agreement our loss computes from the same chunk
logits (logged every step), LM heads with a bias, and GKD's generalised JSD. So it is a choice
(``kd_loss_backend: liger``), not the default.

liger's ``jsd_beta`` is 1 for the reverse KL, KL(student || teacher), and 0 for the forward KL; both average over
the supervised tokens, which the sums below turn back into a sum so that the trainer normalises both backends the
same way.
"""

from __future__ import annotations

import torch

from recipes.training.kd_loss import DistillationSums, HeadWeights

LIGER_BETA = {"reverse_kl": 1.0, "forward_kl": 0.0}
INSTALL_HINT = "pip install 'apriel-h1[liger]' (liger-kernel)"


def check_liger_backend(kind: str) -> None:
    """A ValueError naming the fix if liger-kernel cannot compute this loss here."""
    if kind not in LIGER_BETA:
        raise ValueError(
            f"kd_loss_backend 'liger' computes reverse_kl and forward_kl, not {kind!r}; "
            "use kd_loss_backend 'chunked' for it"
        )
    try:
        import liger_kernel.transformers  # noqa: F401
    except ImportError:
        raise ValueError(f"kd_loss_backend 'liger' needs liger-kernel: {INSTALL_HINT}") from None


class LigerDistillation:
    """Callable with ``chunked_distillation_sums``' arguments; returns sums with the divergence only."""

    def __init__(self, kind: str, temperature: float, ignore_index: int = -100):
        check_liger_backend(kind)
        from liger_kernel.transformers import LigerFusedLinearJSD

        self.loss = LigerFusedLinearJSD(jsd_beta=LIGER_BETA[kind], ignore_index=ignore_index, temperature=temperature)
        self.ignore_index = ignore_index

    def __call__(
        self, student_hidden: torch.Tensor, student_head: HeadWeights, teacher_hidden: torch.Tensor,
        teacher_head: HeadWeights, labels: torch.Tensor,
    ) -> DistillationSums:
        (student_weight, student_bias), (teacher_weight, teacher_bias) = student_head, teacher_head
        if student_bias is not None or teacher_bias is not None:
            raise ValueError("kd_loss_backend 'liger' takes LM heads without a bias; use kd_loss_backend 'chunked'")
        supervised = int((labels != self.ignore_index).sum())
        mean = self.loss(
            student_hidden.flatten(0, -2), student_weight, teacher_hidden.flatten(0, -2).detach(),
            teacher_weight.detach(), labels.flatten(),
        )
        return DistillationSums(mean * supervised, None, None, supervised)

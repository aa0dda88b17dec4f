"""``DistillationTrainer``: a ``transformers.Trainer`` whose loss is a divergence to a frozen teacher.

Apriel-H1 aligns a freshly converted hybrid with its transformer teacher by end-to-end knowledge
distillation (paper section 3.2): reverse KL at temperature 1 over the teacher's full next-token
distribution, on the assistant tokens of SFT data. Everything else (optimizer, schedule, gradient
accumulation, mixed precision, DDP/FSDP/DeepSpeed, checkpoints, logging) is ``Trainer``'s.

The loss never materialises full logits: both models run their base model to the final hidden states
and :func:`recipes.training.kd_loss.chunked_distillation_sums` projects them through the LM heads a chunk at a time.
The teacher is placed the way TRL places its teachers and reference models: not wrapped for DDP, sharded
for FSDP and ZeRO-3 through TRL's ``prepare_fsdp``/``prepare_deepspeed``. Both models' forwards run through
their wrappers' ``forward`` (TRL's forward redirection) so that DDP sees the student's forward and
FSDP/DeepSpeed gather parameters for it, and ZeRO-3-partitioned LM heads are gathered for the projection.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import ExitStack
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor
from transformers import PreTrainedModel, Trainer
from trl.models import prepare_deepspeed, prepare_fsdp
from trl.models.utils import _ForwardRedirection
from trl.trainer.utils import maybe_gather_lm_head_ctx

from recipes.training.checkpoints import CompleteCheckpointsMixin
from recipes.training.kd_loss import (
    LOSS_KINDS,
    MODEL_INPUTS,
    DistillationSums,
    HeadWeights,
    chunked_distillation_sums,
    final_hidden_states,
)
from recipes.training.kd_loss_liger import LigerDistillation
from recipes.training.zero3 import register_for_zero3

KD_LOSS_BACKENDS = ("chunked", "liger")


def lm_head_weights(head: nn.Module) -> HeadWeights:
    """An LM head's (weight, bias) as plain tensors: an FSDP2-sharded head (DTensor) is gathered once here,
    not once per chunk."""
    weight, bias = head.weight, head.bias
    if isinstance(weight, DTensor):
        return weight.full_tensor(), None if bias is None else bias.full_tensor()
    return weight, bias


class DistillationTrainer(CompleteCheckpointsMixin, Trainer):
    """Trains ``model`` (the student) to match ``teacher_model``'s next-token distribution.

    Args:
        teacher_model: the frozen teacher; same vocabulary as the student. It is put in eval mode, frozen,
            cast to the student's dtype and placed on the student's device(s).
        loss_kind: ``reverse_kl`` (Apriel-H1's choice), ``forward_kl`` or ``jsd``.
        beta: mixture weight of the generalised JSD (``jsd`` only).
        temperature: softmax temperature of both distributions (1 in Apriel-H1); the loss is not rescaled by T^2.
        chunk_size: tokens projected through the LM heads at a time; peak loss memory is about
            ``chunk_size * vocab * 4 bytes`` times a small constant.
        kd_loss_backend: ``chunked`` (``recipes.training.kd_loss``, the default) or ``liger`` (liger-kernel's fused linear
            JSD: less memory, faster at long sequences; reverse/forward KL only, heads without bias, and no
            ``student_ce`` / ``top1_agreement`` in the logs; see ``recipes.training.kd_loss_liger``).
        teacher_inference_mode: run the teacher's forward under ``torch.inference_mode`` instead of
            ``torch.no_grad`` (no version counters or view tracking on its tensors). Single-process and DDP
            only: FSDP and ZeRO-3 gather and free the teacher's parameters around its forward, and inference-mode
            tensors may not be modified outside it, so the combination is refused.

    Logged besides ``loss``: ``kd_loss`` (per-token divergence), ``student_ce`` (the student's cross-entropy
    on the labels) and ``top1_agreement`` (fraction of supervised tokens where both models' argmax agree); the
    last two with the chunked loss only.
    """

    # compute_loss divides by the supervised-token count of the whole accumulated batch (num_items_in_batch),
    # so Trainer must not divide by the accumulation steps again.
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        *args: Any,
        teacher_model: PreTrainedModel,
        loss_kind: str = "reverse_kl",
        beta: float = 0.5,
        temperature: float = 1.0,
        chunk_size: int = 2048,
        teacher_inference_mode: bool = False,
        kd_loss_backend: str = "chunked",
        **kwargs: Any,
    ):
        if loss_kind not in LOSS_KINDS:
            raise ValueError(f"Unknown loss_kind={loss_kind!r}; choose one of {LOSS_KINDS}.")
        if kd_loss_backend not in KD_LOSS_BACKENDS:
            raise ValueError(f"Unknown kd_loss_backend={kd_loss_backend!r}; choose one of {KD_LOSS_BACKENDS}.")
        self.liger = LigerDistillation(loss_kind, temperature) if kd_loss_backend == "liger" else None
        super().__init__(*args, **kwargs)
        if teacher_inference_mode and (self.is_fsdp_enabled or self.is_deepspeed_enabled):
            raise ValueError(
                "teacher_inference_mode works only without FSDP and DeepSpeed, which gather and free the teacher's "
                "parameters around its forward; set teacher_inference_mode to false for sharded runs."
            )
        self.teacher_grad_mode = torch.inference_mode if teacher_inference_mode else torch.no_grad
        # Trainer counts each accumulated batch's supervised tokens only for models that take loss kwargs;
        # this loss always normalises by that count.
        self.model_accepts_loss_kwargs = True
        self.loss_kind, self.beta, self.temperature, self.chunk_size = loss_kind, beta, temperature, chunk_size
        register_for_zero3(self.accelerator, self.model, teacher_model)
        self.teacher_model = self._prepare_teacher(teacher_model)
        self._forward_redirection = _ForwardRedirection()
        self._metric_sums: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)

    def _prepare_teacher(self, teacher: PreTrainedModel) -> nn.Module:
        student_vocab = self.model.config.get_text_config().vocab_size
        teacher_vocab = teacher.config.get_text_config().vocab_size
        if student_vocab != teacher_vocab:
            raise ValueError(
                f"The student's vocab_size ({student_vocab}) differs from the teacher's ({teacher_vocab}). "
                "Distillation compares full next-token distributions, so both must share one vocabulary: "
                "convert the student from this teacher."
            )
        teacher.eval()
        teacher.requires_grad_(False)
        teacher.to(dtype=self.model.dtype)
        if self.is_deepspeed_enabled:
            return prepare_deepspeed(teacher, self.accelerator)
        if self.is_fsdp_enabled:
            return self._prepare_fsdp_teacher(teacher)
        return self.accelerator.prepare_model(teacher, evaluation_mode=True)

    def _prepare_fsdp_teacher(self, teacher: PreTrainedModel) -> nn.Module:
        """Shard the teacher with its own layer classes, then leave the FSDP plugin as the student needs it.

        accelerate's plugin keeps one auto-wrap policy, built from the first model it wraps and a list of layer
        class names that must all exist in that model. Teacher and student have different decoder layers
        (``MistralDecoderLayer`` vs ``AprielH1DecoderLayer``), so one list cannot serve both: the teacher is
        wrapped with its ``_no_split_modules`` and the plugin's policy is restored for the student.
        """
        plugin = self.accelerator.state.fsdp_plugin
        saved = plugin.auto_wrap_policy, plugin.transformer_cls_names_to_wrap
        plugin.transformer_cls_names_to_wrap = list(getattr(teacher, "_no_split_modules", None) or [])
        try:
            return prepare_fsdp(teacher, self.accelerator)
        finally:
            plugin.auto_wrap_policy, plugin.transformer_cls_names_to_wrap = saved

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        model_inputs = {key: inputs[key] for key in MODEL_INPUTS if key in inputs}
        labels = inputs["labels"][:, 1:]  # position t predicts token t + 1
        student = self.accelerator.unwrap_model(model)
        sums = self._forward_redirection(model, student, self._distillation_sums, student, model_inputs, labels)
        self._accumulate_metrics(sums)

        token_count = num_items_in_batch if num_items_in_batch is not None else max(sums.num_tokens, 1)
        loss = sums.divergence / token_count
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            # num_items_in_batch counts every process's tokens, while DDP averages the gradients over processes
            loss = loss * self.accelerator.num_processes
        return (loss, None) if return_outputs else loss

    def _distillation_sums(
        self, student: PreTrainedModel, model_inputs: dict[str, torch.Tensor], labels: torch.Tensor
    ) -> DistillationSums:
        """Runs inside the student wrapper's forward (see ``compute_loss``)."""
        student_hidden = final_hidden_states(student, model_inputs)
        teacher = self.accelerator.unwrap_model(self.teacher_model)
        with self.teacher_grad_mode():
            teacher_hidden, teacher_weights = self._forward_redirection(
                self.teacher_model, teacher, self._teacher_hidden_and_head, teacher, model_inputs
            )
        student_head = student.get_output_embeddings()
        with ExitStack() as gathered:
            gathered.enter_context(maybe_gather_lm_head_ctx(student_head.weight, student_head.bias))
            if teacher_weights is None:
                teacher_head = teacher.get_output_embeddings()
                gathered.enter_context(maybe_gather_lm_head_ctx(teacher_head.weight, teacher_head.bias))
                teacher_weights = lm_head_weights(teacher_head)
            if self.liger is not None:
                return self.liger(
                    student_hidden, lm_head_weights(student_head), teacher_hidden.to(student_hidden.device),
                    teacher_weights, labels,
                )
            return chunked_distillation_sums(
                student_hidden,
                lm_head_weights(student_head),
                teacher_hidden.to(student_hidden.device),
                teacher_weights,
                labels,
                kind=self.loss_kind,
                beta=self.beta,
                temperature=self.temperature,
                chunk_size=self.chunk_size,
            )

    def _teacher_hidden_and_head(
        self, teacher: PreTrainedModel, model_inputs: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, HeadWeights | None]:
        """Runs inside the teacher wrapper's forward. Under FSDP1 the LM head is a view of a flat parameter that
        is whole only during that forward, so its weights are copied out here; otherwise None (read later)."""
        hidden = final_hidden_states(teacher, model_inputs)
        if not (self.is_fsdp_enabled and self.accelerator.state.fsdp_plugin.fsdp_version == 1):
            return hidden, None
        weight, bias = lm_head_weights(teacher.get_output_embeddings())
        return hidden, (weight.detach().clone(), None if bias is None else bias.detach().clone())

    def _accumulate_metrics(self, sums: DistillationSums) -> None:
        mode = "train" if self.model.training else "eval"
        totals = self._metric_sums[mode]
        for key, value in (
            ("kd_loss", sums.divergence.detach()),
            ("student_ce", sums.student_cross_entropy),
            ("top1_agreement", None if sums.top1_agreements is None else sums.top1_agreements.float()),
            ("tokens", torch.tensor(float(sums.num_tokens), device=sums.divergence.device)),
        ):
            if value is not None:  # the liger backend computes the divergence alone
                totals[key] = totals.get(key, 0) + value

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation computes the distillation loss (the default would ask the student for logits)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds the per-token KD loss, student CE and top-1 agreement since the last log, over all processes."""
        mode = "train" if self.model.training else "eval"
        totals = self._metric_sums.pop(mode, None)
        if totals:
            summed = self.accelerator.reduce(torch.stack([totals[key] for key in sorted(totals)]), reduction="sum")
            summed = dict(zip(sorted(totals), summed.tolist()))
            tokens = max(summed.pop("tokens"), 1.0)
            prefix = "eval_" if mode == "eval" else ""
            logs.update({f"{prefix}{key}": value / tokens for key, value in summed.items()})
        super().log(logs, start_time)

    def checkpoint_state(self) -> dict[str, Any]:
        """What a stage has done so far, in the units the paper reports (steps and tokens), and its loss."""
        return {**super().checkpoint_state(), "loss_kind": self.loss_kind, "temperature": self.temperature}

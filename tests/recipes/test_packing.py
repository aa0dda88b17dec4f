"""Packing keeps conversations apart: the distillation loss of a packed batch is that of its conversations alone.

Three synthetic conversations are packed into one row (``packing: true``) and collated as training sees them
(TRL's padding-free collator: one flat row, ``position_ids`` restarting per conversation). The KD loss (and its
gradient) over that batch must equal the token-weighted loss of the three conversations run one at a time,
for the bundled tiny teacher and its converted hybrid student (fp32, CPU).
"""

from __future__ import annotations

import pytest
import torch
from transformers import DataCollatorForSeq2Seq

from trl import pack_dataset

from recipes.training.data import (
    CROSS_DOCUMENT,
    IGNORE_INDEX,
    build_dataset,
    flattens_packed_rows,
    load_conversations,
    training_collator,
)

from .conftest import hybrid_student, load_teacher
from .test_distillation import make_trainer

MAX_LENGTH = 1024  # room for the three conversations in one packed row


@pytest.fixture(scope="module")
def conversations():
    return load_conversations("synthetic", synthetic_examples=3, seed=1)


def test_packed_rows_collate_to_one_flat_row_with_restarting_positions(tokenizer, conversations):
    alone = build_dataset(conversations, tokenizer, MAX_LENGTH, packing=False)
    packed = build_dataset(conversations, tokenizer, MAX_LENGTH, packing=True)
    assert len(packed) == 1 and sorted(packed[0]["seq_lengths"]) == sorted(len(row["input_ids"]) for row in alone)
    batch = training_collator(tokenizer, True)([packed[0]])
    lengths = packed[0]["seq_lengths"]
    assert "attention_mask" not in batch and batch["input_ids"].shape == (1, sum(lengths))
    assert batch["position_ids"][0].tolist() == [p for length in lengths for p in range(length)]
    assert (batch["labels"][batch["position_ids"] == 0] == IGNORE_INDEX).all()
    assert "seq_lengths" not in build_dataset(conversations, tokenizer, MAX_LENGTH, packing=CROSS_DOCUMENT).column_names


def test_an_unknown_packing_mode_is_refused_naming_the_modes(tokenizer, conversations):
    with pytest.raises(ValueError, match="cross_document"):
        build_dataset(conversations, tokenizer, MAX_LENGTH, packing="yes please")


def _loss_and_grads(trainer, batches, token_count):
    student = trainer.model
    student.zero_grad()
    total = sum(trainer.compute_loss(student, batch, num_items_in_batch=token_count) for batch in batches)
    total.backward()
    return total.detach(), {name: p.grad.clone() for name, p in student.named_parameters() if p.grad is not None}


def test_kd_loss_of_a_packed_batch_is_the_token_weighted_loss_of_its_conversations(
    teacher_dir, tokenizer, conversations, tmp_path
):
    teacher = load_teacher(teacher_dir)
    trainer = make_trainer(teacher, hybrid_student(teacher), tokenizer, None, tmp_path)
    alone = build_dataset(conversations, tokenizer, MAX_LENGTH, packing=False)
    singles = [DataCollatorForSeq2Seq(tokenizer, padding=True)([row]) for row in alone]
    token_count = sum(int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) for batch in singles)
    packed = training_collator(tokenizer, True)(list(build_dataset(conversations, tokenizer, MAX_LENGTH, True)))
    assert int((packed["labels"][:, 1:] != IGNORE_INDEX).sum()) == token_count

    packed_loss, packed_grads = _loss_and_grads(trainer, [packed], token_count)
    loss, grads = _loss_and_grads(trainer, singles, token_count)
    torch.testing.assert_close(packed_loss, loss, rtol=1e-5, atol=1e-6)
    assert packed_grads.keys() == grads.keys()
    for name in grads:
        torch.testing.assert_close(packed_grads[name], grads[name], rtol=1e-4, atol=1e-6, msg=name)

    # the same row read as one sequence (cross-document packing) is a different loss
    cross = DataCollatorForSeq2Seq(tokenizer, padding=True)(
        list(build_dataset(conversations, tokenizer, MAX_LENGTH, CROSS_DOCUMENT)))
    cross_loss, _ = _loss_and_grads(trainer, [cross], token_count)
    assert abs(cross_loss - loss) > 1e-4


def test_only_varlen_flash_attention_flattens_packed_rows():
    assert flattens_packed_rows("flash_attention_2") and flattens_packed_rows("flash_attention_3")
    assert not any(flattens_packed_rows(name) for name in ("sdpa", "eager", None))


def test_kd_loss_of_packed_rows_kept_apart_is_the_token_weighted_loss_of_their_conversations(
    teacher_dir, tokenizer, tmp_path
):
    """Under SDPA or eager attention packed rows stay rows, each padded by a pad document of its own: the loss and
    gradients still equal those of the conversations alone."""
    conversations = load_conversations("synthetic", synthetic_examples=4, seed=2)
    alone = build_dataset(conversations, tokenizer, MAX_LENGTH, packing=False)
    lengths = sorted(len(row["input_ids"]) for row in alone)
    rows = pack_dataset(alone, seq_length=lengths[-1] + lengths[0], strategy="bfd")  # 2+ rows of unequal length
    batch = training_collator(tokenizer, True, flatten_rows=False)(list(rows))
    assert batch["input_ids"].shape[0] == len(rows) >= 2 and "attention_mask" not in batch
    longest = max(sum(row["seq_lengths"]) for row in rows)
    assert batch["input_ids"].shape[1] == longest
    for index, row in enumerate(rows):
        tail = longest - sum(row["seq_lengths"])
        expected = [p for length in [*row["seq_lengths"], tail] for p in range(length)]
        assert batch["position_ids"][index].tolist() == expected
        if tail:
            assert (batch["labels"][index, -tail:] == IGNORE_INDEX).all()
            assert (batch["input_ids"][index, -tail:] == tokenizer.pad_token_id).all()

    teacher = load_teacher(teacher_dir)
    trainer = make_trainer(teacher, hybrid_student(teacher), tokenizer, None, tmp_path)
    singles = [DataCollatorForSeq2Seq(tokenizer, padding=True)([row]) for row in alone]
    token_count = sum(int((single["labels"][:, 1:] != IGNORE_INDEX).sum()) for single in singles)
    assert int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) == token_count
    packed_loss, packed_grads = _loss_and_grads(trainer, [batch], token_count)
    loss, grads = _loss_and_grads(trainer, singles, token_count)
    torch.testing.assert_close(packed_loss, loss, rtol=1e-5, atol=1e-6)
    for name in grads:
        torch.testing.assert_close(packed_grads[name], grads[name], rtol=1e-4, atol=1e-6, msg=name)

"""DistillationTrainer: the loss falls, the teacher and frozen parameters stay put, resume is exact."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import DataCollatorForSeq2Seq, TrainerCallback, TrainingArguments

from recipes.training.checkpoints import STATE_FILE, latest_complete_checkpoint, read_checkpoint_state
from recipes.training.distillation import DistillationTrainer
from recipes.training.trainable import select_trainable_parameters

from .conftest import hybrid_student, load_teacher


def make_trainer(teacher, student, tokenizer, dataset, output_dir, callbacks=(), **arguments) -> DistillationTrainer:
    settings = dict(
        max_steps=20, per_device_train_batch_size=2, learning_rate=3e-3, lr_scheduler_type="linear", warmup_steps=2,
        logging_steps=1, save_strategy="no", report_to=[], seed=0, include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,
    )
    settings.update(arguments)
    return DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=TrainingArguments(output_dir=str(output_dir), **settings),
        train_dataset=dataset,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True),
        callbacks=list(callbacks),
        chunk_size=64,
    )


def logged(trainer: DistillationTrainer, key: str) -> dict[int, float]:
    return {entry["step"]: entry[key] for entry in trainer.state.log_history if key in entry}


def test_kd_loss_falls_and_the_teacher_is_untouched(teacher_dir, tokenizer, train_dataset, tmp_path):
    teacher = load_teacher(teacher_dir)
    with torch.no_grad():
        teacher.lm_head.weight.mul_(8)  # a confident teacher, far from the student's initial distribution
    teacher_before = {name: tensor.clone() for name, tensor in teacher.state_dict().items()}
    trainer = make_trainer(teacher, hybrid_student(teacher), tokenizer, train_dataset, tmp_path)
    trainer.train()

    kd_loss = list(logged(trainer, "kd_loss").values())
    assert sum(kd_loss[-5:]) / 5 < 0.5 * sum(kd_loss[:5]) / 5
    agreement = list(logged(trainer, "top1_agreement").values())
    assert sum(agreement[-5:]) > sum(agreement[:5])
    assert all(key in trainer.state.log_history[0] for key in ("student_ce", "num_input_tokens_seen"))
    for name, tensor in teacher.state_dict().items():
        assert torch.equal(tensor, teacher_before[name]), name
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize("trainable, trained_marker", [("mamba", ".mixer."), ("mamba_mlp", (".mixer.", ".mlp."))])
def test_frozen_parameters_get_no_gradient_and_stay_unchanged(
    trainable, trained_marker, teacher_dir, tokenizer, train_dataset, tmp_path
):
    teacher = load_teacher(teacher_dir)
    student = hybrid_student(teacher)
    trained = set(select_trainable_parameters(student, trainable))
    markers = trained_marker if isinstance(trained_marker, tuple) else (trained_marker,)
    assert trained == {name for name, _ in student.named_parameters() if any(m in name for m in markers)}
    before = {name: p.detach().clone() for name, p in student.named_parameters()}

    class CheckGradients(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            for name, parameter in model.named_parameters():
                assert (parameter.grad is not None) == (name in trained), name

    trainer = make_trainer(teacher, student, tokenizer, train_dataset, tmp_path, [CheckGradients()], max_steps=3)
    trainer.train()
    for name, parameter in student.named_parameters():
        assert torch.equal(parameter, before[name]) != (name in trained), name


def test_selecting_mamba_parameters_of_a_plain_transformer_is_refused(teacher_dir):
    with pytest.raises(ValueError, match="selects no parameter of the student"):
        select_trainable_parameters(load_teacher(teacher_dir), "mamba")


def test_vocab_mismatch_is_refused(teacher_dir, tokenizer, train_dataset, tmp_path):
    teacher = load_teacher(teacher_dir)
    student = hybrid_student(teacher)
    student.resize_token_embeddings(teacher.config.vocab_size + 8)
    with pytest.raises(ValueError, match=r"student's vocab_size \(\d+\) differs from the teacher's"):
        make_trainer(teacher, student, tokenizer, train_dataset, tmp_path)


class Interrupt(TrainerCallback):
    """Kills the run after ``step``, once a checkpoint exists, like a preempted job."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def test_resume_after_an_interruption_reproduces_the_uninterrupted_run(teacher_dir, tokenizer, train_dataset, tmp_path):
    settings = dict(max_steps=8, save_strategy="steps", save_steps=4, logging_steps=1)
    teacher = load_teacher(teacher_dir)

    uninterrupted = make_trainer(teacher, hybrid_student(teacher), tokenizer, train_dataset, tmp_path / "a", **settings)
    uninterrupted.train()

    interrupted = make_trainer(
        teacher, hybrid_student(teacher), tokenizer, train_dataset, tmp_path / "b", [Interrupt(6)], **settings
    )
    with pytest.raises(KeyboardInterrupt):
        interrupted.train()
    half_saved = tmp_path / "b" / "checkpoint-6"  # killed while saving: weights there, no state file yet
    half_saved.mkdir()
    (half_saved / "model.safetensors").write_bytes(b"truncated")
    checkpoint = latest_complete_checkpoint(tmp_path / "b")
    assert checkpoint.name == "checkpoint-4"

    resumed = make_trainer(teacher, hybrid_student(teacher), tokenizer, train_dataset, tmp_path / "b", **settings)
    resumed.train(resume_from_checkpoint=str(checkpoint))

    expected, got = logged(uninterrupted, "loss"), logged(resumed, "loss")
    assert sorted(got) == list(range(1, 9))  # steps 1-4 come back with the checkpoint's trainer_state
    for step in got:
        assert got[step] == pytest.approx(expected[step], rel=1e-5), step
    assert resumed.state.num_input_tokens_seen == uninterrupted.state.num_input_tokens_seen


def test_checkpoints_record_the_tokens_seen(teacher_dir, tokenizer, train_dataset, tmp_path):
    one_epoch = train_dataset.select(range(4))  # two steps of two rows: every row seen exactly once
    teacher = load_teacher(teacher_dir)
    student = hybrid_student(teacher)
    trainer = make_trainer(
        teacher, student, tokenizer, one_epoch, tmp_path, max_steps=2, save_strategy="steps", save_steps=2
    )
    trainer.train()
    checkpoint = tmp_path / "checkpoint-2"
    state = read_checkpoint_state(checkpoint)
    assert state["global_step"] == 2
    assert state["num_input_tokens_seen"] == sum(len(row["input_ids"]) for row in one_epoch)
    trainer_state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert trainer_state["num_input_tokens_seen"] == state["num_input_tokens_seen"]
    assert (checkpoint / "model.safetensors").is_file() and (checkpoint / STATE_FILE).is_file()


def test_a_crash_while_marking_keeps_the_previous_checkpoint_under_save_total_limit_1(
    teacher_dir, tokenizer, train_dataset, tmp_path, monkeypatch
):
    """Old checkpoints are pruned only after the new one is marked complete, so a run killed in between
    still has a checkpoint to resume from; an uninterrupted run keeps only the newest."""
    import recipes.training.checkpoints

    settings = dict(max_steps=4, save_strategy="steps", save_steps=2, save_total_limit=1)
    teacher = load_teacher(teacher_dir)
    make_trainer(teacher, hybrid_student(teacher), tokenizer, train_dataset, tmp_path / "whole", **settings).train()
    assert sorted(path.name for path in (tmp_path / "whole").glob("checkpoint-*")) == ["checkpoint-4"]
    assert latest_complete_checkpoint(tmp_path / "whole").name == "checkpoint-4"

    mark = recipes.training.checkpoints.mark_checkpoint_complete

    def killed_while_marking_step_4(checkpoint_dir, state):
        if state["global_step"] == 4:
            raise KeyboardInterrupt
        mark(checkpoint_dir, state)

    monkeypatch.setattr(recipes.training.checkpoints, "mark_checkpoint_complete", killed_while_marking_step_4)
    crashed = make_trainer(teacher, hybrid_student(teacher), tokenizer, train_dataset, tmp_path / "crash", **settings)
    with pytest.raises(KeyboardInterrupt):
        crashed.train()
    assert latest_complete_checkpoint(tmp_path / "crash").name == "checkpoint-2"

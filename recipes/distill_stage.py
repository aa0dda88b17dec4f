"""One Apriel-H1 distillation stage: align a converted hybrid with its teacher by reverse-KL distillation.

    accelerate launch recipes/distill_stage.py --config recipes/configs/distill_tiny.yaml [--set KEY=VALUE] [--resume]
    python recipes/distill_stage.py --config recipes/configs/distill_tiny.yaml

The config (every key documented in the YAML file) names the teacher, the student (a conversion output
directory), the data and the optimisation. Checkpoints go to ``output_dir/checkpoint-N`` (safetensors
weights, optimizer, RNG state, and ``checkpoint_state.json`` with the tokens seen, written last so a
checkpoint without it is known to be incomplete); ``--resume`` continues from the newest complete one. The
distilled student is saved to ``output_dir/final``, with ``training_data.json``: the data source, the held-out rows
and the real text mixed in (``text_data``/``text_share``: rows, share of tokens, source and its sha256).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script (accelerate launch recipes/distill_stage.py): import from the repo
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    TrainingArguments,
)

import modeling_apriel_h1  # noqa: F401  (registers AprielH1ForCausalLM with the Auto classes)
from cli import command_line, model_source
from conversion.atomic_io import write_json_atomically
from conversion.record import RECORD_FILE
from recipes.training.checkpoints import latest_complete_checkpoint, mark_checkpoint_complete
from recipes.training.data import build_dataset, flattens_packed_rows, load_conversations, training_collator
from recipes.training.distillation import DistillationTrainer
from recipes.training.kd_loss_liger import check_liger_backend
from recipes.training.pairing import check_architectures_match, check_conversion_record, check_tokenizers_match
from recipes.training.speed_levers import checkpoint_first_layers, compile_decoder_layers
from recipes.training.stage_config import StageConfig, load_stage_config
from recipes.training.text_mix import describe_mix, mix_in_text
from recipes.training.trainable import select_trainable_parameters

FINAL_DIR = "final"
DATA_RECORD_FILE = "training_data.json"  # in FINAL_DIR: what the stage trained on (source, held-out rows, text mixed in)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="stage config YAML (see recipes/configs/distill_tiny.yaml)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, value read as YAML (repeatable): --set max_steps=100 --set packing=true",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the newest complete checkpoint in output_dir"
    )
    return parser.parse_args(argv)


def load_tokenizer_if_present(path: str) -> PreTrainedTokenizerBase | None:
    """The tokenizer saved with a model, or None for a model directory without one."""
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
        return None


def training_arguments(config: StageConfig, has_eval: bool) -> TrainingArguments:
    """Trainer settings of a stage: AdamW, linear warm-up and decay, tokens counted, safetensors checkpoints.

    Activation checkpointing is not passed: run_stage turns it on per layer (checkpoint_first_layers), and
    naming it here at all warns on transformers 5.24, which renamed the argument (5.17 has only the old name).
    """
    return TrainingArguments(
        output_dir=config.output_dir,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.per_device_batch_size,
        per_device_eval_batch_size=config.per_device_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        logging_steps=config.logging_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=config.eval_steps,
        seed=config.seed,
        bf16=config.bf16,
        include_num_input_tokens_seen="non_padding",
        report_to=config.report_to,
        ddp_find_unused_parameters=False,  # every trainable parameter takes part in each step's loss
        remove_unused_columns=False,  # packed rows keep seq_lengths for the collator (recipes.training.data)
        dataloader_pin_memory=torch.cuda.is_available(),  # pinning without a GPU only warns
    )


def run_stage(config: StageConfig, resume: bool) -> DistillationTrainer:
    """Load, check, train, save; returns the trainer (its state holds the logs). With ``resume`` it continues
    from the newest complete checkpoint in ``output_dir`` where there is one (the schedule always asks)."""
    # named and checked before anything loads, so that a wrong path is not sent to the Hub client
    model_source(
        config.teacher, "teacher", "python -m recipes.tiny_teacher --output DIR (or download a teacher)",
        tokenizer=True, hub=True,
    )
    model_source(
        config.student, "student",
        f"python -m conversion.convert --teacher {config.teacher} --output DIR --mamba-layers ...", hub=True,
    )
    check_conversion_record(config.teacher, config.student)
    if config.kd_loss_backend == "liger":
        check_liger_backend(config.loss)
    tokenizer = AutoTokenizer.from_pretrained(config.teacher)
    check_tokenizers_match(tokenizer, load_tokenizer_if_present(config.student))
    dtype = getattr(torch, config.dtype)
    teacher = AutoModelForCausalLM.from_pretrained(config.teacher, dtype=dtype)
    student = AutoModelForCausalLM.from_pretrained(config.student, dtype=dtype)
    check_architectures_match(teacher, student)
    select_trainable_parameters(student, config.trainable)
    if config.gradient_checkpointing:
        checkpoint_first_layers(student, config.gradient_checkpointing_layers)
    if config.compile_layers:
        compile_decoder_layers(student)
        compile_decoder_layers(teacher)

    rows = load_conversations(config.data, config.data_split, config.synthetic_examples, config.data_seed)
    if config.eval_examples:
        split = rows.train_test_split(test_size=config.eval_examples, seed=config.data_seed)
        rows, eval_rows = split["train"], split["test"]
    # Text joins the training rows only: the held-out rows stay task rows, so that the eval KD loss measures the
    # task alone and stays comparable between runs with and without text.
    rows, text_mix = mix_in_text(rows, tokenizer, config.max_seq_length, config.text_data, config.text_share,
                                 config.data_seed)
    print(describe_mix(text_mix), flush=True)
    data_record = {"data": config.data, "data_split": config.data_split,
                   "synthetic_examples": config.synthetic_examples, "data_seed": config.data_seed,
                   "eval_rows": config.eval_examples, "text_mix": text_mix}
    train_dataset = build_dataset(rows, tokenizer, config.max_seq_length, config.packing)
    eval_dataset = None
    if config.eval_examples:
        eval_dataset = build_dataset(eval_rows, tokenizer, config.max_seq_length, config.packing)

    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=training_arguments(config, has_eval=eval_dataset is not None),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=training_collator(
            tokenizer, config.packing,
            flatten_rows=all(flattens_packed_rows(model.config._attn_implementation) for model in (teacher, student)),
        ),
        loss_kind=config.loss,
        beta=config.jsd_beta,
        temperature=config.temperature,
        chunk_size=config.chunk_size,
        teacher_inference_mode=config.teacher_inference_mode,
        kd_loss_backend=config.kd_loss_backend,
    )
    checkpoint = latest_complete_checkpoint(config.output_dir) if resume else None
    if checkpoint:
        print(f"resuming from {checkpoint}")
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)

    final_dir = Path(config.output_dir) / FINAL_DIR
    trainer.save_model(str(final_dir))
    record = Path(config.student) / RECORD_FILE
    if trainer.args.should_save and record.is_file():  # the distilled student keeps its provenance
        shutil.copy2(record, final_dir / RECORD_FILE)
    if trainer.args.should_save:
        write_json_atomically(final_dir / DATA_RECORD_FILE, data_record)
        mark_checkpoint_complete(final_dir, trainer.checkpoint_state())
    return trainer


def summary(trainer: DistillationTrainer, config: StageConfig) -> str:
    """What the stage did, for the end of the run's output."""
    history = trainer.state.log_history
    last_train = next((entry for entry in reversed(history) if "kd_loss" in entry), {})
    last_eval = next((entry for entry in reversed(history) if "eval_kd_loss" in entry), {})
    trained = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    lines = [
        "Distillation stage finished",
        f"  student -> {Path(config.output_dir) / FINAL_DIR}",
        f"  teacher {config.teacher}, loss {config.loss}, trainable {config.trainable} ({trained:,} parameters)",
        f"  steps {trainer.state.global_step}, tokens seen {trainer.state.num_input_tokens_seen:,}",
    ]
    for label, entry, prefix in (("train (last log)", last_train, ""), ("eval", last_eval, "eval_")):
        if entry:
            lines.append(
                f"  {label}: kd_loss {entry[prefix + 'kd_loss']:.4f}, student_ce {entry[prefix + 'student_ce']:.4f}, "
                f"top1_agreement {entry[prefix + 'top1_agreement']:.3f}"
            )
    return "\n".join(lines)


@command_line
def main(argv: list[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    config = load_stage_config(arguments.config, arguments.overrides)
    if arguments.resume and latest_complete_checkpoint(config.output_dir) is None:
        print(f"--resume: no complete checkpoint in {config.output_dir}, starting anew")
    trainer = run_stage(config, arguments.resume)
    if trainer.is_world_process_zero():
        print(summary(trainer, config))


if __name__ == "__main__":
    sys.exit(main())

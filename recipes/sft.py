"""Supervised fine-tuning of a hybrid on reasoning traces with TRL's ``SFTTrainer`` (the H1-30-SFT step).

The data options are the distillation recipe's (``recipes.training.data``): the bundled synthetic traces, local
jsonl/parquet files, or a ``datasets`` name, in chat or prompt/completion form, rendered with the tokenizer's
chat template, loss on the assistant tokens only; ``--text-data``/``--text-share`` mix real text in, learned on
every token (``recipes.training.text_mix``). Checkpoints are safetensors, marked complete as the
distillation's are (``recipes.training.checkpoints``); ``--resume`` continues from the newest complete one. The final
model and an ``sft.json`` record (steps, tokens, final loss) land in ``output_dir``.

    python -m recipes.sft --model out/stage-3 --output-dir out/sft --data synthetic --max-steps 200
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
from trl import SFTConfig, SFTTrainer

import modeling_apriel_h1  # noqa: F401  (registers apriel_h1 with the Auto classes)
from cli import command_line, model_source, read_yaml_mapping
from cli.yaml_values import load_yaml
from conversion.atomic_io import staged_output_dir
from modeling_apriel_h1.transformers_compat import activation_checkpointing_argument
from recipes.training.checkpoints import CompleteCheckpointsMixin, latest_complete_checkpoint
from recipes.training.data import (
    DOCUMENTS,
    SYNTHETIC_SOURCE,
    build_dataset,
    flattens_packed_rows,
    load_conversations,
    packing_mode,
    training_collator,
)
from recipes.training.stage_config import checked_values
from recipes.training.text_mix import check_text_settings, describe_mix, mix_in_text
from recipes.training.zero3 import register_for_zero3

RECORD_FILE = "sft.json"
# TRL's SFTConfig turns checkpointing on by default; named as the installed transformers names it (no warning)
CHECKPOINTING_ARGUMENT = activation_checkpointing_argument()


class CompleteCheckpointsSFTTrainer(CompleteCheckpointsMixin, SFTTrainer):
    """TRL's SFTTrainer whose checkpoints carry the completion marker, so resume never picks a half-saved one."""


@dataclass
class SFTRecipe:
    """Every knob of the SFT pass; a YAML file may set any of them, the command line overrides."""

    model: str = ""  # a save_pretrained directory (a distilled hybrid); its tokenizer must sit beside it
    output_dir: str = "outputs/sft"
    data: str = SYNTHETIC_SOURCE  # "synthetic", a local .jsonl/.parquet file, or a datasets name
    synthetic_examples: int = 2000  # rows generated when data is "synthetic"
    # Real text mixed into the data (recipes.training.text_mix): null, "python_docs" (the running Python's own
    # documentation, its held-out share left out) or a local .txt/.jsonl file; text_share of the tokens (0 <= x < 1).
    text_data: str | None = None
    text_share: float = 0.0
    max_seq_length: int = 512
    packing: bool | str = False  # true: packed conversations kept apart; cross_document: one sequence (recipes.training.data)
    learning_rate: float = 2e-5
    warmup_steps: float = 0.05  # an int is a step count, a float in [0, 1) a fraction of max_steps
    max_steps: int = 100  # optimizer steps (at least 1; the length is set by steps only, there is no epoch count)
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    save_steps: int = 50
    logging_steps: int = 10
    seed: int = 0
    bf16: bool = False
    # Recompute each layer's forward during backward to hold fewer activations: off, as in the distillation
    # configs, because it costs a second forward per step (on the CPU reference path +60-70% step time, measured
    # on the demo teacher's hybrid at 8 x 352 tokens); turn it on when long sequences run out of GPU memory.
    gradient_checkpointing: bool = False


def load_recipe(config_path: str | None, overrides: dict[str, object]) -> SFTRecipe:
    """The recipe: the YAML file's settings, then the command line's; each value checked against its field."""
    values: dict[str, object] = dict(read_yaml_mapping(config_path, "SFT config")) if config_path else {}
    origins = {key: f"in {config_path}" for key in values}
    for key, value in overrides.items():
        if value is not None:
            values[key], origins[key] = value, f"from --{key.replace('_', '-')}"
    known = {field.name for field in fields(SFTRecipe)}
    unknown = sorted(set(values) - known)
    if unknown:
        where = "; ".join(dict.fromkeys(origins[key] for key in unknown))
        raise ValueError(f"unknown SFT settings {unknown} ({where}); the settings are {sorted(known)}")
    recipe = SFTRecipe(**checked_values(values, SFTRecipe, origins))
    packing_mode(recipe.packing)  # an unknown packing mode fails here, before any model is loaded
    check_text_settings(recipe.text_data, recipe.text_share, origins)
    if not recipe.model:
        raise ValueError("no model to fine-tune: set `model` (a save_pretrained directory) in the config or --model")
    return recipe


def run_sft(recipe: SFTRecipe, resume: bool = False) -> dict[str, object]:
    """Fine-tune ``recipe.model``; returns (and writes) the record that model cards and manifests read."""
    set_seed(recipe.seed)
    output_dir = Path(recipe.output_dir)
    model_source(recipe.model, "model", tokenizer=True)
    tokenizer = AutoTokenizer.from_pretrained(recipe.model)
    model = AutoModelForCausalLM.from_pretrained(recipe.model)
    rows = load_conversations(recipe.data, synthetic_examples=recipe.synthetic_examples, seed=recipe.seed)
    rows, text_mix = mix_in_text(rows, tokenizer, recipe.max_seq_length, recipe.text_data, recipe.text_share,
                                 recipe.seed)
    print(describe_mix(text_mix), flush=True)
    train_dataset = build_dataset(rows, tokenizer, recipe.max_seq_length, recipe.packing)
    # Packed conversations kept apart: under varlen flash-attention TRL's padding-free collator (enabled by packing
    # with its "bfd" strategy; the rows are already packed, so TRL does not pack again) writes position_ids
    # restarting at each one in one flat row; otherwise the rows stay rows (recipes.training.data.PackedRowsCollator).
    keep_apart = packing_mode(recipe.packing) == DOCUMENTS
    flatten = keep_apart and flattens_packed_rows(model.config._attn_implementation)
    collator = training_collator(tokenizer, recipe.packing, flatten_rows=False) if keep_apart and not flatten else None
    checkpoints_dir = output_dir / "checkpoints"
    args = SFTConfig(
        output_dir=str(checkpoints_dir),
        max_length=recipe.max_seq_length,
        learning_rate=recipe.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=recipe.warmup_steps,
        max_steps=recipe.max_steps,
        per_device_train_batch_size=recipe.per_device_train_batch_size,
        gradient_accumulation_steps=recipe.gradient_accumulation_steps,
        save_steps=recipe.save_steps,
        save_strategy="steps",
        logging_steps=recipe.logging_steps,
        seed=recipe.seed,
        bf16=recipe.bf16,
        report_to=[],
        include_num_input_tokens_seen="non_padding",  # counted as the distillation stages count them
        packing=flatten,
        packing_strategy="bfd",
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,
        dataloader_pin_memory=torch.cuda.is_available(),  # pinning without a GPU only warns
        **{CHECKPOINTING_ARGUMENT: recipe.gradient_checkpointing},  # TRL defaults it on; named for 5.24 (above)
    )
    trainer = CompleteCheckpointsSFTTrainer(
        model=model, args=args, train_dataset=train_dataset, processing_class=tokenizer, data_collator=collator
    )
    register_for_zero3(trainer.accelerator, trainer.model)
    checkpoint = latest_complete_checkpoint(checkpoints_dir) if resume else None
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    record = {
        "model": recipe.model,
        "steps": trainer.state.global_step,
        "tokens": int(trainer.state.num_input_tokens_seen),
        "final_loss": losses[-1] if losses else float(result.training_loss),
        "wall_time_s": time.perf_counter() - start,
        "recipe": asdict(recipe),
        "text_mix": text_mix,  # the real text mixed into the data (None: none)
    }
    with staged_output_dir(output_dir / "final", overwrite=True) as staging:
        trainer.save_model(str(staging))
        tokenizer.save_pretrained(str(staging))
        for sidecar in ("conversion.json",):
            source = Path(recipe.model) / sidecar
            if source.is_file():
                (staging / sidecar).write_text(source.read_text())
        (staging / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


@command_line
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file with SFTRecipe fields")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest complete checkpoint in output_dir")
    for field in fields(SFTRecipe):
        flag = "--" + field.name.replace("_", "-")
        if field.type == "bool":
            parser.add_argument(flag, dest=field.name, type=lambda text: text.lower() in ("1", "true", "yes"))
        elif field.type in ("bool | str", "int", "float", "str | None"):  # read as YAML: 1e-3, true, a packing mode, null
            parser.add_argument(flag, dest=field.name, type=load_yaml)  # load_recipe checks type and range
        else:
            parser.add_argument(flag, dest=field.name)
    args = vars(parser.parse_args(argv))
    config, resume = args.pop("config"), args.pop("resume")
    record = run_sft(load_recipe(config, args), resume=resume)
    print(f"SFT done: {record['steps']} steps, {record['tokens']:,} tokens, final loss {record['final_loss']:.4f}")


if __name__ == "__main__":
    sys.exit(main())

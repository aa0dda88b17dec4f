"""A tiny local teacher (tokenizer + Mistral model) for tests, the default config and the demo.

Real teachers are 15B-parameter downloads; tests and the end-to-end demo need one that is built in
seconds on a CPU with nothing fetched. The tokenizer is character-level over printable ASCII (the
synthetic traces' alphabet) with chat special tokens and a Jinja chat template; the model is a small
GQA ``MistralForCausalLM``, the architecture family of Apriel's teachers. Random init is enough for
tests; a few dozen training steps on the synthetic traces give the demo a teacher that knows something.

Command line: ``python -m recipes.tiny_teacher --output DIR [--train-steps N] [--time-budget SECONDS]
[--batch-size ROWS] [--num-examples N]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    DataCollatorForSeq2Seq,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)

from cli import UsageError, command_line, read_json_if_present
from conversion.atomic_io import staged_output_dir
from recipes.training.data import SYNTHETIC_SOURCE, build_dataset, load_conversations

PAD, BOS, EOS, UNK = "<pad>", "<s>", "<|end|>", "<unk>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
STAMP_FILE = "tiny_teacher.json"
# what training actually did (steps, epochs): a time budget can end it before ``train_steps``
TRAINING_FILE = "tiny_teacher_training.json"


@dataclass(frozen=True)
class TinyTeacherSpec:
    """Everything that decides the teacher's weights; a cached teacher is reused only for the same spec."""

    hidden_size: int = 64
    intermediate_size: int = 192
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    train_steps: int = 0
    time_budget_s: float | None = None
    batch_size: int = 16
    learning_rate: float = 3e-3
    max_seq_length: int = 384
    seed: int = 0
    num_examples: int = 0  # distinct training problems, cycled over; 0: one fresh problem per row trained on


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer over printable ASCII and newline, with chat special tokens."""
    specials = [PAD, BOS, EOS, UNK, *ROLE_TOKENS]
    alphabet = [chr(code) for code in range(32, 127)] + ["\n"]
    backend = Tokenizer(models.WordLevel({token: i for i, token in enumerate(specials + alphabet)}, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(tokenizer: PreTrainedTokenizerFast, spec: TinyTeacherSpec) -> MistralForCausalLM:
    """A randomly initialised small GQA Mistral over ``tokenizer``'s vocabulary."""
    set_seed(spec.seed)
    config = MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=4 * spec.max_seq_length,
        sliding_window=None,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return MistralForCausalLM(config)


class _StopAfter(TrainerCallback):
    """Ends training once a wall-clock budget is spent (the demo wants 'as good as N seconds allow')."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = control.should_training_stop or time.monotonic() > self.deadline


def train_on_synthetic(
    model: MistralForCausalLM, tokenizer: PreTrainedTokenizerFast, spec: TinyTeacherSpec, work_dir: Path
) -> dict:
    """Supervised training on synthetic traces (CE on assistant tokens); returns the steps and epochs it ran
    (fewer than ``train_steps`` when the time budget ended it) and the logged losses."""
    num_examples = spec.num_examples or spec.train_steps * spec.batch_size
    rows = load_conversations(SYNTHETIC_SOURCE, synthetic_examples=num_examples, seed=spec.seed)
    dataset = build_dataset(rows, tokenizer, spec.max_seq_length, packing=False)
    args = TrainingArguments(
        output_dir=str(work_dir),
        max_steps=spec.train_steps,
        per_device_train_batch_size=spec.batch_size,
        learning_rate=spec.learning_rate,
        warmup_steps=max(1, spec.train_steps // 10),
        lr_scheduler_type="cosine",
        logging_steps=max(1, spec.train_steps // 10),
        save_strategy="no",
        report_to=[],
        seed=spec.seed,
    )
    callbacks = [_StopAfter(spec.time_budget_s)] if spec.time_budget_s else []
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True),
        callbacks=callbacks,
    )
    trainer.train()
    return {"steps": trainer.state.global_step, "epochs": round(trainer.state.epoch or 0.0, 3),
            "losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]}


def ensure_tiny_teacher(directory: str | Path, spec: TinyTeacherSpec = TinyTeacherSpec()) -> Path:
    """Build the tiny teacher into ``directory`` unless a teacher of the same spec is already there.

    The directory appears complete or not at all, so parallel test workers and interrupted builds never
    see half a teacher.
    """
    directory = Path(directory)
    if _stamp(directory) == asdict(spec):
        return directory
    with staged_output_dir(directory, overwrite=True) as staging:
        tokenizer = build_tokenizer()
        model = build_model(tokenizer, spec)
        if spec.train_steps > 0:
            training = train_on_synthetic(model, tokenizer, spec, staging / "trainer")
            shutil.rmtree(staging / "trainer")
            (staging / TRAINING_FILE).write_text(json.dumps(training, indent=2))
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / STAMP_FILE).write_text(json.dumps(asdict(spec), indent=2))
    return directory


def training_record(directory: str | Path) -> dict | None:
    """What training did for the teacher in ``directory`` (steps, epochs, losses); None for an untrained one."""
    return read_json_if_present(Path(directory) / TRAINING_FILE)


def _stamp(directory: Path) -> dict | None:
    return read_json_if_present(directory / STAMP_FILE)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="directory to write the teacher (model + tokenizer) to")
    parser.add_argument("--train-steps", type=int, default=0, help="training steps on synthetic traces (0: random)")
    parser.add_argument("--time-budget", type=float, default=None, help="stop training after this many seconds")
    parser.add_argument("--batch-size", type=int, default=TinyTeacherSpec.batch_size, help="rows per training step")
    parser.add_argument("--num-examples", type=int, default=TinyTeacherSpec.num_examples,
                        help="distinct training problems, cycled over (0: a fresh problem for every row)")
    parser.add_argument("--hidden-size", type=int, default=TinyTeacherSpec.hidden_size)
    parser.add_argument("--num-layers", type=int, default=TinyTeacherSpec.num_hidden_layers)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def spec_from_arguments(args: argparse.Namespace) -> TinyTeacherSpec:
    """The teacher a command line asks for (a shipped teacher's stamp must equal its recorded command's spec)."""
    heads = TinyTeacherSpec.num_attention_heads
    if args.hidden_size <= 0 or args.hidden_size % (2 * heads):
        raise UsageError(
            f"--hidden-size is {args.hidden_size}; give a positive multiple of {2 * heads} ({heads} heads of even width)"
        )
    if args.batch_size < 1 or args.num_examples < 0:
        raise UsageError(f"--batch-size is {args.batch_size} and --num-examples {args.num_examples}; give a batch of at "
                         "least 1 and a non-negative number of examples")
    if args.num_layers < 2:
        raise UsageError(f"--num-layers is {args.num_layers}; a hybrid needs at least 2 layers (one stays attention)")
    return TinyTeacherSpec(
        hidden_size=args.hidden_size,
        intermediate_size=3 * args.hidden_size,
        num_hidden_layers=args.num_layers,
        train_steps=args.train_steps,
        time_budget_s=args.time_budget,
        batch_size=args.batch_size,
        seed=args.seed,
        num_examples=args.num_examples,
    )


@command_line
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    output = Path(args.output)
    if output.exists() and _stamp(output) is None:  # never replace what this command did not build
        raise UsageError(
            f"{output} already exists and is not a tiny teacher built by this command; give a new directory"
        )
    spec = spec_from_arguments(args)
    print(f"Tiny teacher ready at {ensure_tiny_teacher(args.output, spec)}")


if __name__ == "__main__":
    sys.exit(main())

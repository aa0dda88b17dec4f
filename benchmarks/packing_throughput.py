"""Distillation throughput with padded batches vs packed rows, on documents as long as reasoning traces.

    PYTHONPATH=. python benchmarks/packing_throughput.py                 # one H200, a few minutes
    PYTHONPATH=. python benchmarks/packing_throughput.py --smoke         # tiny models on the CPU: checks it runs

Both modes run the recipe's own pieces: ``DistillationTrainer`` (reverse KL, chunked LM heads) through
``Trainer.train`` for one epoch over the same documents, collated by ``recipes.training.data.training_collator``:

- ``padding``: ``per_device_batch`` documents per step, padded to the longest (``packing: false``);
- ``packing``: the documents packed into rows of ``max_length`` tokens by TRL's BFD packer, ``rows_per_batch``
  rows per step (``packing: true``, documents kept apart): flattened into one padding-free row under
  flash-attention, kept as rows (each padded by a pad document of its own) under SDPA or eager attention.

Both modes are sized to the same most tokens per step (``per_device_batch * max_length``). Printed per mode:
steps, tokens computed (every position of every row), useful tokens (the documents' own), the useful fraction,
useful tokens/s over the timed epoch and the mean step time. Synthetic data and weights: random token ids with
lengths log-uniform in [min_length, max_length]; a random Mistral-style teacher and its hybrid (every other
layer Mamba, MIL-initialised by ``conversion.convert_model``). Speed depends only on the shapes. A short
warm-up run (not timed) compiles the kernels first.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import tempfile
import time

import datasets
import torch
from transformers import MistralConfig, MistralForCausalLM, TrainerCallback, TrainingArguments
from trl import pack_dataset

from conversion import convert_model
from recipes.tiny_teacher import build_tokenizer
from recipes.training.data import flattens_packed_rows, training_collator
from recipes.training.distillation import DistillationTrainer

def documents(count: int, min_length: int, max_length: int, vocab: int, seed: int) -> datasets.Dataset:
    """Random documents with log-uniform lengths, every token supervised (labels = input ids)."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(count):
        log_length = torch.empty(1).uniform_(math.log(min_length), math.log(max_length), generator=generator)
        ids = torch.randint(3, vocab, (int(math.exp(log_length.item())),), generator=generator).tolist()
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": ids})
    return datasets.Dataset.from_list(rows)


class CountingCollator:
    """Wraps a collator and adds up the positions it hands out and how many of them are real tokens."""

    def __init__(self, collate):
        self.collate, self.computed, self.useful, self.batches = collate, 0, 0, 0

    def __call__(self, examples):
        batch = self.collate(examples)
        self.computed += batch["input_ids"].numel()
        self.useful += sum(len(example["input_ids"]) for example in examples)
        self.batches += 1
        return batch


class EpochTimer(TrainerCallback):
    """Wall time of the training loop, measured between synchronised points."""

    def on_train_begin(self, args, state, control, **kwargs):
        torch.cuda.synchronize() if torch.cuda.is_available() else None
        self.start = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        torch.cuda.synchronize() if torch.cuda.is_available() else None
        self.seconds = time.perf_counter() - self.start


def build_models(args: argparse.Namespace, device: str, pad_id: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    config = MistralConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=int(args.hidden * 2.75),
        num_hidden_layers=args.layers, num_attention_heads=args.hidden // 128 or 2,
        num_key_value_heads=max(args.hidden // 512, 1), head_dim=128 if args.hidden >= 256 else 16,
        max_position_embeddings=max(args.max_length, 8192), sliding_window=None, pad_token_id=pad_id,
        attn_implementation=args.attn,
    )
    torch.manual_seed(0)
    teacher = MistralForCausalLM(config).to(device)
    student = convert_model(teacher, list(range(1, args.layers, 2))).to(device).train()
    student.config._attn_implementation = args.attn
    return teacher, student


def run(mode: str, data: datasets.Dataset, models, tokenizer, args, output_dir: str, steps: int | None) -> dict:
    teacher, student = models
    packing = mode == "packing"
    rows = pack_dataset(data, seq_length=args.max_length, strategy="bfd") if packing else data
    collator = CountingCollator(training_collator(tokenizer, packing, flatten_rows=flattens_packed_rows(args.attn)))
    timer = EpochTimer()
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, train_dataset=rows, data_collator=collator, callbacks=[timer],
        args=TrainingArguments(
            output_dir=output_dir, per_device_train_batch_size=args.rows_per_batch if packing else args.batch,
            num_train_epochs=1, max_steps=steps or -1, learning_rate=1e-5, bf16=args.bf16, report_to=[],
            save_strategy="no", logging_strategy="no", disable_tqdm=True, remove_unused_columns=False,
            dataloader_drop_last=False, gradient_checkpointing=args.gradient_checkpointing, seed=0,
        ),
        chunk_size=2048,
    )
    trainer.train()
    return {"mode": mode, "steps": trainer.state.global_step, "computed": collator.computed,
            "useful": collator.useful, "seconds": timer.seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=192, help="documents in the timed epoch")
    parser.add_argument("--min-length", type=int, default=200)
    parser.add_argument("--max-length", type=int, default=8192, help="longest document, and the packed row length")
    parser.add_argument("--batch", type=int, default=4, help="documents per step when padding")
    parser.add_argument("--rows-per-batch", type=int, default=4, help="packed rows per step (flattened into one under flash-attention)")
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--attn", default=None,
                        help="attention implementation (default: flash_attention_2 where flash-attn is installed, "
                             "else sdpa, with the packed rows kept apart and a block-diagonal mask per row)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny models and documents on the CPU, to check it runs")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if args.smoke:
        args.documents, args.min_length, args.max_length = 12, 8, 64
        args.hidden, args.layers, args.vocab = 64, 2, 97
    elif device != "cuda":
        raise SystemExit("benchmarks/packing_throughput.py needs a CUDA device (or --smoke on the CPU)")
    args.bf16 = device == "cuda"
    if args.attn is None:
        has_flash = device == "cuda" and importlib.util.find_spec("flash_attn") is not None
        args.attn = "flash_attention_2" if has_flash else "sdpa"

    data = documents(args.documents, args.min_length, args.max_length, args.vocab, seed=0)
    warmup = documents(16, args.min_length, args.max_length, args.vocab, seed=1)
    tokenizer = build_tokenizer()  # the bundled tiny tokenizer: the collators need only its pad id
    models = build_models(args, device, tokenizer.pad_token_id)
    kernels = "reference (CPU)" if device == "cpu" else "Triton for packed rows; mamba-ssm if installed, else Triton, padded"
    print(f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}; teacher {args.layers} layers x "
          f"{args.hidden}, student every other layer Mamba; {args.attn}; Mamba kernels: {kernels}; "
          f"{args.documents} documents of {args.min_length}-{args.max_length} tokens (log-uniform), "
          f"{sum(len(ids) for ids in data['input_ids']):,} tokens", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as output_dir:
        for mode in ("padding", "packing"):
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            run(mode, warmup, models, tokenizer, args, output_dir, steps=2)  # compile kernels, allocate
            results.append(run(mode, data, models, tokenizer, args, output_dir, steps=None))
            if device == "cuda":
                print(f"{mode}: peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB", flush=True)
    print("| mode | steps | tokens computed | useful tokens | useful fraction | useful tokens/s | ms/step |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        # a smoke run's times are CPU noise, not speeds
        speed = f"{r['useful'] / r['seconds']:,.0f}" if device == "cuda" else "-"
        step = f"{1e3 * r['seconds'] / r['steps']:.0f}" if device == "cuda" else "-"
        print(f"| {r['mode']} | {r['steps']} | {r['computed']:,} | {r['useful']:,} | {r['useful'] / r['computed']:.3f} "
              f"| {speed} | {step} |")


if __name__ == "__main__":
    main()

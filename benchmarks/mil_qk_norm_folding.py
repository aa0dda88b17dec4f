"""Should MIL fold a Qwen3 teacher's q/k norm weights into C and B? The KL to the teacher right after conversion,
both ways, on a tiny Qwen3 trained on the bundled synthetic traces (CPU, a few minutes).

    python -m benchmarks.mil_qk_norm_folding [--train-steps 300] [--output outputs/mil_qk_norm_folding.json]

The teacher is the tiny teacher's recipe (``recipes.tiny_teacher``: its tokenizer, widths and training) with a
``Qwen3ForCausalLM`` in place of the Mistral. Each single layer, then every other layer, is converted with
``fold_qk_norms`` True and False (same seed, so only C and B differ), and the reverse KL (the distillation
loss) of the student to the teacher is averaged over the assistant tokens of held-out problems.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import DataCollatorForSeq2Seq, Qwen3Config, Qwen3ForCausalLM, set_seed

from conversion.model import convert_model
from recipes.tiny_teacher import TinyTeacherSpec, build_tokenizer, train_on_synthetic
from recipes.training.data import SYNTHETIC_SOURCE, build_dataset, load_conversations
from recipes.training.kd_loss import token_divergence


def build_qwen3_teacher(tokenizer, spec: TinyTeacherSpec) -> Qwen3ForCausalLM:
    set_seed(spec.seed)
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers, num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads, head_dim=spec.hidden_size // spec.num_attention_heads,
        max_position_embeddings=4 * spec.max_seq_length, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return Qwen3ForCausalLM(config)


@torch.no_grad()
def reverse_kl(student, teacher, batches: list[dict]) -> float:
    """Mean reverse KL(student || teacher) per supervised (assistant) token."""
    total, tokens = 0.0, 0
    for batch in batches:
        supervised = batch["labels"][:, 1:] != -100
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        student_logits = student(**inputs).logits[:, :-1][supervised]
        teacher_logits = teacher(**inputs).logits[:, :-1][supervised]
        total += token_divergence(student_logits, teacher_logits, "reverse_kl").sum().item()
        tokens += int(supervised.sum())
    return total / tokens


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--held-out", type=int, default=32, help="held-out problems scored")
    parser.add_argument("--output", default="outputs/mil_qk_norm_folding.json")
    args = parser.parse_args(argv)

    torch.set_num_threads(max(1, torch.get_num_threads()))
    spec = TinyTeacherSpec(train_steps=args.train_steps)
    tokenizer = build_tokenizer()
    teacher = build_qwen3_teacher(tokenizer, spec)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        training = train_on_synthetic(teacher, tokenizer, spec, Path(work))
    teacher.eval()
    train_seconds = time.perf_counter() - started

    rows = load_conversations(SYNTHETIC_SOURCE, synthetic_examples=args.held_out, seed=spec.seed + 1000)
    dataset = build_dataset(rows, tokenizer, spec.max_seq_length, packing=False)
    collate = DataCollatorForSeq2Seq(tokenizer, padding=True, return_tensors="pt")
    batches = [collate([dataset[i] for i in range(start, min(start + 8, len(dataset)))])
               for start in range(0, len(dataset), 8)]
    gains = {  # how far training moved the norm weights from their initial ones
        f"layer {index} {norm}": [round(value.item(), 3) for value in getattr(layer.self_attn, norm).weight.aminmax()]
        for index, layer in enumerate(teacher.model.layers) for norm in ("q_norm", "k_norm")
    }
    layer_sets = [[index] for index in range(spec.num_hidden_layers)] + [list(range(1, spec.num_hidden_layers, 2))]
    results = []
    for layers in layer_sets:
        row = {"mamba_layers": layers}
        for fold in (True, False):
            student = convert_model(teacher, layers, seed=0, fold_qk_norms=fold)
            row["fold" if fold else "copy"] = reverse_kl(student, teacher, batches)
        results.append(row)
        print(f"Mamba layers {layers}: reverse KL folded {row['fold']:.4f}, copied {row['copy']:.4f}")
    summary = {
        "command": "python -m benchmarks.mil_qk_norm_folding " + " ".join(argv if argv is not None else sys.argv[1:]),
        "train_steps": training["steps"], "train_seconds": round(train_seconds, 1),
        "final_train_loss": training["losses"][-1] if training["losses"] else None,
        "norm_weight_ranges": gains, "results": results,
        "folding_lower_in": sum(row["fold"] < row["copy"] for row in results), "of": len(results),
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"folding gives the lower KL in {summary['folding_lower_in']} of {len(results)} conversions; {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Wall time of lm-eval generation on a hybrid: ``--model hf`` against ``--model apriel_h1``, on one GPU.

Both backends run the local task ``apriel_h1_synthetic`` (held-out synthetic problems, chat template) on the
same saved hybrid, with long generations (``--max-gen-toks``); the time is that of the whole
``lm_eval.simple_evaluate`` call after an untimed warm-up run of each (kernel compilation). ``hf`` batches
``--batch`` requests per ``generate()`` call (its best case); ``apriel_h1`` hands all requests to its decoder
with ``--batch`` sequences in flight. Random weights (speed does not depend on them), so answers are wrong and
generations end at the stop string "\\n\\n" or at ``--max-gen-toks``; both backends see the same prompts and, in
exact arithmetic, produce the same text (the agreement is printed: bf16 rounding differs between batch shapes).
The tokenizer is the character-level tiny one (~100 ids), so the LM head is cheap: the comparison is of the
decode loops, not of a real vocabulary's last matmul.

    python -m benchmarks.lm_eval_speed [--problems 128] [--max-gen-toks 1024] [--batch 64] [--fraction 0.75]

Prints one line per backend (wall s, generated tokens, tokens/s) and the ratio hf time / apriel_h1 time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import lm_eval
import torch
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from transformers import MistralConfig, MistralForCausalLM

from conversion import convert_model
from recipes.evaluation.lm_eval_model import AprielH1LM
from recipes.lm_eval_tasks import SYNTHETIC_TASK, TASKS_DIR
from recipes.tiny_teacher import build_tokenizer


def save_random_hybrid(directory: Path, args: argparse.Namespace) -> Path:
    """A random Mistral-shaped teacher with ``--fraction`` of its layers converted to Mamba, saved with a tokenizer."""
    tokenizer = build_tokenizer()
    config = MistralConfig(
        vocab_size=len(tokenizer), hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        head_dim=args.hidden // args.heads, max_position_embeddings=8192, sliding_window=None,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    teacher = MistralForCausalLM(config)
    count = round(args.fraction * args.layers)
    step = (args.layers - 2) / max(count, 1)
    hybrid = convert_model(teacher, sorted({1 + int(i * step) for i in range(count)}))
    hybrid.generation_config.eos_token_id = tokenizer.eos_token_id
    hybrid.to(torch.bfloat16).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run(lm, args: argparse.Namespace, manager: TaskManager, limit: int, max_gen_toks: int) -> tuple[float, list[str]]:
    synchronize(args.device)
    began = time.perf_counter()
    output = lm_eval.simple_evaluate(
        model=lm, tasks=[SYNTHETIC_TASK], limit=limit, task_manager=manager, apply_chat_template=True,
        gen_kwargs={"max_gen_toks": max_gen_toks}, log_samples=True,
    )
    synchronize(args.device)
    samples = sorted(output["samples"][SYNTHETIC_TASK], key=lambda sample: sample["doc_id"])
    return time.perf_counter() - began, [sample["resps"][0][0] for sample in samples]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=128)
    parser.add_argument("--max-gen-toks", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--fraction", type=float, default=0.75, help="share of layers that are Mamba")
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--device", default="cuda", help="cpu only to smoke-test the script: its times are no speed")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("this benchmark times GPU decoding; run it on a CUDA machine")
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    with tempfile.TemporaryDirectory() as work:
        directory = str(save_random_hybrid(Path(work) / "hybrid", args))
        backends = {
            "hf": HFLM(pretrained=directory, trust_remote_code=True, device=args.device, dtype="bfloat16", batch_size=args.batch),
            "apriel_h1": AprielH1LM(pretrained=directory, device=args.device, dtype="bfloat16", decode_batch_size=args.batch),
        }
        times, texts = {}, {}
        for name, lm in backends.items():
            run(lm, args, manager, limit=4, max_gen_toks=16)  # warm-up: kernel compilation, not timed
            times[name], texts[name] = run(lm, args, manager, args.problems, args.max_gen_toks)
            tokens = sum(len(lm.tok_encode(text, add_special_tokens=False)) for text in texts[name])
            print(f"{name:10} {times[name]:8.1f} s  {tokens:8d} generated tokens (after stop-string cut)  "
                  f"{tokens / times[name]:9.1f} tokens/s", flush=True)
    same = sum(a == b for a, b in zip(texts["hf"], texts["apriel_h1"]))
    print(f"decoder used by apriel_h1: {backends['apriel_h1'].generation_stats['decoder']}; identical responses {same}/{len(texts['hf'])}")
    print(f"speed-up (hf time / apriel_h1 time): {times['hf'] / times['apriel_h1']:.2f}x")


if __name__ == "__main__":
    main()

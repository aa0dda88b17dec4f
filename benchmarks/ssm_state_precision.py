"""Does a bf16 Mamba state cost answers? Trained hybrids decoded by the engine with an fp32 and a bf16 state.

``DecodeEngine(ssm_state_dtype=torch.bfloat16)`` halves the bytes a Mamba layer's decode step moves (mamba_ssm,
vLLM and transformers' Mamba caches hold the state in the model's dtype); the engine's default stays fp32 until
this check says otherwise. For each model: greedy answers to the held-out synthetic problems with each state
dtype, their exact match, and the share of problems whose generated tokens are identical under both.

    python benchmarks/ssm_state_precision.py --models outputs/study/ablations/*/seed-0/stage-3/distill/final \\
        --tokenizer outputs/study/teacher --dtype bfloat16 --json $OUT/ssm_state_precision.json

Runs on a CPU too (slowly: the engine's eager path); on CUDA the engine replays CUDA graphs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout

import modeling_apriel_h1  # noqa: E402,F401  (registers apriel_h1 with the Auto classes)
from cli import UsageError, command_line, existing_path  # noqa: E402
from modeling_apriel_h1.engine.decoding import DecodeEngine  # noqa: E402
from recipes.training.held_out import HELD_OUT_SEED, question_prompt  # noqa: E402
from recipes.training.synthetic import Problem, generate_problems, is_correct  # noqa: E402

STATE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def greedy_answers(model, tokenizer, problems: list[Problem], max_new_tokens: int, batch: int,
                   state_dtype: torch.dtype) -> list[list[int]]:
    """Each problem's generated tokens, greedy, through the decode engine with the Mamba state in ``state_dtype``."""
    prompts = [tokenizer(question_prompt(tokenizer, p), add_special_tokens=False)["input_ids"] for p in problems]
    longest = max(len(prompt) for prompt in prompts)
    engine = DecodeEngine(model, max_batch_size=min(batch, len(prompts)), max_seq_len=longest + max_new_tokens + 1,
                          ssm_state_dtype=state_dtype)
    return engine.generate_batch(prompts, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id)


def compare_state_dtypes(model_dir: Path, tokenizer, problems: list[Problem], args: argparse.Namespace) -> dict:
    """Exact match under each state dtype and the share of identical generations, for one model."""
    mamba_layers = len(getattr(AutoConfig.from_pretrained(model_dir), "mamba_layer_indices", ()))
    if not mamba_layers:  # checked before any weight is loaded
        raise UsageError(f"{model_dir} has no Mamba layers, so its state dtype changes nothing; give a hybrid")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=STATE_DTYPES[args.dtype]).to(device).eval()
    outputs = {name: greedy_answers(model, tokenizer, problems, args.max_new_tokens, args.batch, dtype)
               for name, dtype in STATE_DTYPES.items()}
    exact = {name: sum(is_correct(tokenizer.decode(tokens, skip_special_tokens=True), problem.answer)
                       for tokens, problem in zip(generated, problems)) / len(problems)
             for name, generated in outputs.items()}
    identical = sum(a == b for a, b in zip(outputs["float32"], outputs["bfloat16"])) / len(problems)
    return {"model": str(model_dir), "mamba_layers": mamba_layers, "num_layers": model.config.num_hidden_layers,
            "model_dtype": args.dtype, "exact_match": exact, "identical_generations": identical,
            "num_problems": len(problems), "device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}


@command_line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", required=True, help="hybrid model directories (from_pretrained)")
    parser.add_argument("--tokenizer", required=True, help="directory of the tokenizer (the teacher's)")
    parser.add_argument("--problems", type=int, default=256, help="held-out synthetic problems")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--batch", type=int, default=64, help="engine slots")
    parser.add_argument("--dtype", choices=list(STATE_DTYPES), default="float32", help="the models' weights")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)
    if args.problems < 1 or args.max_new_tokens < 1 or args.batch < 1:
        raise UsageError("--problems, --max-new-tokens and --batch must be at least 1")
    tokenizer = AutoTokenizer.from_pretrained(existing_path(args.tokenizer, "tokenizer directory"))
    problems = generate_problems(args.problems, HELD_OUT_SEED)
    rows = []
    for model_dir in args.models:
        rows.append(compare_state_dtypes(existing_path(model_dir, "model directory"), tokenizer, problems, args))
        row = rows[-1]
        print(f"{model_dir} ({row['mamba_layers']}/{row['num_layers']} Mamba, {args.dtype} weights): exact match "
              f"fp32 state {row['exact_match']['float32']:.3f}, bf16 state {row['exact_match']['bfloat16']:.3f}; "
              f"identical generations on {round(row['identical_generations'] * row['num_problems'])} of {row['num_problems']} "
              "problems", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Peak GPU memory and time of one distillation-loss step: chunked (``recipes.training.kd_loss``) against naive.

One step is what the trainer does after both base models ran: project the student's and the teacher's
final hidden states through their LM heads, compute the divergence over the supervised tokens, and
backpropagate into the student's hidden states and LM head. The naive path materialises both full logit
tensors and lets autograd keep what it needs; the chunked path projects ``chunk`` tokens at a time and never
holds more than one chunk's logits. Inputs are synthetic (random bf16 hidden states and heads at the shape of
Apriel-H1's 15B teacher: 16k tokens, hidden 5120, vocabulary 131072), so nothing is downloaded.

Goal: chunked peak at most a quarter of the naive peak, and no slower.

    python -m benchmarks.kd_loss_memory                        # 16k x 131k x 5120, chunks 1024/2048/4096, on CUDA
    python -m benchmarks.kd_loss_memory --seq 8192 --loss jsd  # other shapes and losses
    python -m benchmarks.kd_loss_memory --device cpu --seq 256 --vocab 4096 --hidden 256   # smoke test: losses only

Prints a markdown table. "peak" is the CUDA allocator's high-water mark during the step, "above inputs" the
same minus what the inputs (hidden states, heads, nothing else) occupy before the step; "loss" is the per-token
divergence, which must agree between rows. A row that runs out of memory says so instead of failing the run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a script: import recipes from the repository
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recipes.training.kd_loss import LOSS_KINDS, chunked_distillation_sums, distillation_sums_from_logits

GIB = 1024**3


def make_inputs(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """Random hidden states and heads, scaled so that the logits have a realistic spread (std ~ 2-3)."""
    generator = torch.Generator(device=args.device).manual_seed(0)

    def randn(*shape: int, scale: float) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator, device=args.device) * scale).to(args.dtype)

    labels = torch.randint(0, args.vocab, (1, args.seq), generator=generator, device=args.device)
    labels[:, : int(args.seq * args.prompt_fraction)] = -100  # the prompt carries no label
    return {
        "student_hidden": randn(1, args.seq, args.hidden, scale=1.0).requires_grad_(),
        "student_weight": randn(args.vocab, args.hidden, scale=args.hidden**-0.5 * 2).requires_grad_(),
        "teacher_hidden": randn(1, args.seq, args.hidden, scale=1.0),
        "teacher_weight": randn(args.vocab, args.hidden, scale=args.hidden**-0.5 * 3),
        "labels": labels,
    }


def naive_step(inputs: dict[str, torch.Tensor], args: argparse.Namespace) -> float:
    student_logits = F.linear(inputs["student_hidden"], inputs["student_weight"])
    with torch.no_grad():
        teacher_logits = F.linear(inputs["teacher_hidden"], inputs["teacher_weight"])
    sums = distillation_sums_from_logits(student_logits, teacher_logits, inputs["labels"], args.loss)
    loss = sums.divergence / sums.num_tokens
    loss.backward()
    return loss.item()


def chunked_step(inputs: dict[str, torch.Tensor], args: argparse.Namespace, chunk: int) -> float:
    sums = chunked_distillation_sums(
        inputs["student_hidden"], (inputs["student_weight"], None),
        inputs["teacher_hidden"], (inputs["teacher_weight"], None),
        inputs["labels"], args.loss, chunk_size=chunk,
    )
    loss = sums.divergence / sums.num_tokens
    loss.backward()
    return loss.item()


def measure(step: Callable[[], float], inputs: dict[str, torch.Tensor], args: argparse.Namespace) -> dict:
    """Median time over ``args.steps`` steps after ``args.warmup``, peak memory over all of them."""
    cuda = args.device.startswith("cuda")

    def clear_grads() -> None:
        for tensor in inputs.values():
            tensor.grad = None

    clear_grads()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if cuda else 0
    times, loss = [], float("nan")
    try:
        for index in range(args.warmup + args.steps):
            clear_grads()
            start = time.perf_counter()
            loss = step()
            if cuda:
                torch.cuda.synchronize()
            if index >= args.warmup:
                times.append(time.perf_counter() - start)
    except torch.OutOfMemoryError:
        clear_grads()
        return {"error": "out of memory"}
    clear_grads()
    result = {"ms": 1000 * statistics.median(times), "loss": loss}
    if cuda:
        peak = torch.cuda.max_memory_allocated()
        result.update(peak=peak / GIB, above_inputs=(peak - before) / GIB)
    return result


def table(rows: list[tuple[str, dict]], naive: dict | None, times: bool = True) -> str:
    """Markdown rows of ``measure`` results; with ``times=False`` (a caller on a CPU, whose timings are noise)
    only the loss values, which must agree."""
    if not times:
        lines = ["| method | loss |", "|---|---|"]
        for name, result in rows:
            lines.append(f"| {name} | {result['error'] if 'error' in result else format(result['loss'], '.6f')} |")
        return "\n".join(lines)
    lines = [
        "| method | peak GiB | above inputs GiB | peak / naive | ms / step | time / naive | loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, result in rows:
        if "error" in result:
            lines.append(f"| {name} | {result['error']} | | | | | |")
            continue
        peak = f"{result['peak']:.2f}" if "peak" in result else "n/a"
        above = f"{result['above_inputs']:.2f}" if "peak" in result else "n/a"
        comparable = naive is not None and "error" not in naive
        peak_ratio = f"{result['peak'] / naive['peak']:.2f}" if comparable and "peak" in result else ""
        time_ratio = f"{result['ms'] / naive['ms']:.2f}" if comparable else ""
        lines.append(
            f"| {name} | {peak} | {above} | {peak_ratio} | {result['ms']:.1f} | {time_ratio} | {result['loss']:.6f} |"
        )
    return "\n".join(lines)


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq", type=int, default=16384, help="tokens in the batch (default 16384)")
    parser.add_argument("--vocab", type=int, default=131072, help="vocabulary size (default 131072)")
    parser.add_argument("--hidden", type=int, default=5120, help="hidden size of both models (default 5120)")
    parser.add_argument("--chunks", type=int, nargs="+", default=[1024, 2048, 4096], help="chunk sizes to try")
    parser.add_argument("--loss", choices=LOSS_KINDS, default="reverse_kl", help="divergence (default reverse_kl)")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    parser.add_argument("--prompt-fraction", type=float, default=0.0, help="leading share of tokens without a label")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per method (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--skip-naive", action="store_true", help="do not run the naive full-logits path")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    args.dtype = getattr(torch, args.dtype)
    return args


def main() -> None:
    args = parse_arguments()
    inputs = make_inputs(args)
    rows = []
    naive = None if args.skip_naive else measure(lambda: naive_step(inputs, args), inputs, args)
    if naive is not None:
        rows.append(("naive (full logits)", naive))
    for chunk in args.chunks:
        rows.append((f"chunked, {chunk} tokens", measure(lambda: chunked_step(inputs, args, chunk), inputs, args)))
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    print(
        f"KD loss step ({args.loss}): {args.seq} tokens x vocab {args.vocab} x hidden {args.hidden}, "
        f"{str(args.dtype).removeprefix('torch.')}, {device}, torch {torch.__version__}\n"
    )
    print(table(rows, naive, times=args.device.startswith("cuda")))  # CPU timings would be noise


if __name__ == "__main__":
    main()

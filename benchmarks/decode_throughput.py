"""Decode throughput of a transformer and its Apriel-H1 hybrids with ``generate()`` on one GPU.

Random weights (speed does not depend on them): a Mistral-style teacher, and hybrids with a growing fraction
of its layers converted to Mamba with ``conversion.convert_model``. Each model generates ``--new-tokens``
tokens greedily after a ``--prompt``-token prompt for a batch of ``--batch`` sequences (EOS disabled, so every
sequence runs to the end); tokens/s counts generated tokens only. The prefill is timed separately.

    python benchmarks/decode_throughput.py --fractions 0 0.5 0.8 --batch 16 --prompt 4096 --new-tokens 256
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import MistralConfig, MistralForCausalLM

from conversion import convert_model


def teacher(args: argparse.Namespace) -> MistralForCausalLM:
    config = MistralConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        head_dim=args.hidden // args.heads, max_position_embeddings=args.prompt + args.new_tokens + 8,
        sliding_window=None, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(0)
    return MistralForCausalLM(config).to(torch.bfloat16)


def evenly_spread(count: int, layers: int) -> list[int]:
    """``count`` layers spread over the depth, never the first or last (a stand-in for an importance ranking)."""
    if count == 0:
        return []
    step = (layers - 2) / count
    return sorted({1 + int(i * step) for i in range(count)})


@torch.no_grad()
def time_generate(model, args: argparse.Namespace) -> tuple[float, float, float]:
    """(prefill seconds, decode seconds, decode tokens/s), median of ``--repeats`` runs after a warm-up."""
    ids = torch.randint(3, args.vocab, (args.batch, args.prompt), device="cuda")
    kwargs = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    # Warm-up at the timed shapes: Triton compiles a kernel per specialisation (a one-chunk prefill is another
    # one than a 64-chunk prefill), and a compile inside a timed run was what made earlier numbers inconsistent.
    model.generate(ids, max_new_tokens=8, min_new_tokens=8, **kwargs)
    prefills, decodes = [], []
    for _ in range(args.repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kwargs)
        torch.cuda.synchronize()
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        out = model.generate(ids, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, **kwargs)
        torch.cuda.synchronize()
        if out.shape[1] != args.prompt + args.new_tokens:
            raise RuntimeError(f"generated {out.shape[1] - args.prompt} tokens instead of {args.new_tokens}")
        prefills.append(prefill)
        decodes.append(time.perf_counter() - start - prefill)
    prefill, decode = sorted(prefills)[len(prefills) // 2], sorted(decodes)[len(decodes) // 2]
    return prefill, decode, args.batch * (args.new_tokens - 1) / decode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.5, 0.8])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt", type=int, default=4096)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA device")
    base = teacher(args)
    print(f"device {torch.cuda.get_device_name()}, bf16, batch {args.batch}, prompt {args.prompt}, "
          f"new tokens {args.new_tokens}, {args.layers} layers, hidden {args.hidden}")
    print("| Mamba layers | prefill s | decode s | decode tokens/s | speed-up | peak GiB |")
    print("| --- | --- | --- | --- | --- | --- |")
    baseline = None
    for fraction in args.fractions:
        layers = evenly_spread(round(fraction * args.layers), args.layers)
        model = (convert_model(base, layers) if layers else base).to("cuda", torch.bfloat16).eval()
        torch.cuda.reset_peak_memory_stats()
        prefill, decode, rate = time_generate(model, args)
        baseline = baseline or rate
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"| {len(layers)}/{args.layers} | {prefill:.3f} | {decode:.3f} | {rate:,.0f} | {rate / baseline:.2f}x | {peak:.1f} |",
              flush=True)
        model.to("cpu")
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

"""The quick-start job: build a tiny Apriel-H1 hybrid on the CPU, generate with it, and print what happened.

It shows the model class working end to end (config validation, hybrid cache, ``generate``, save and reload)
without any download.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from transformers import AutoModelForCausalLM

from modeling_apriel_h1 import AprielH1Config, AprielH1ForCausalLM


def build_tiny_hybrid(seed: int) -> AprielH1ForCausalLM:
    torch.manual_seed(seed)
    config = AprielH1Config(
        vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=6, num_attention_heads=4,
        num_key_value_heads=2, layer_types=["attention", "mamba", "mamba", "attention", "mamba", "attention"],
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    return AprielH1ForCausalLM(config).eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args(argv)

    model = build_tiny_hybrid(args.seed)
    print(f"layer types: {model.config.layer_types}")
    print(f"parameters: {sum(p.numel() for p in model.parameters()):,}")
    prompt = torch.randint(3, 256, (2, 16))
    with torch.no_grad():
        model.generate(prompt, max_new_tokens=2, do_sample=False, pad_token_id=0)  # warm-up, not timed
        start = time.perf_counter()
        cached = model.generate(prompt, max_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)
        cached_s = time.perf_counter() - start
        start = time.perf_counter()
        uncached = model.generate(
            prompt, max_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0, use_cache=False
        )
        uncached_s = time.perf_counter() - start
    print(f"greedy tokens (first row): {cached[0, 16:].tolist()}")
    print(f"hybrid cache reproduces full recomputation: {torch.equal(cached, uncached)}")
    print(f"generate with cache {cached_s:.2f}s, without {uncached_s:.2f}s")
    with tempfile.TemporaryDirectory() as directory:
        model.save_pretrained(directory)
        reloaded = AutoModelForCausalLM.from_pretrained(directory).eval()
        with torch.no_grad():
            same = torch.equal(reloaded(prompt).logits, model(prompt).logits)
    print(f"save_pretrained -> AutoModelForCausalLM.from_pretrained is exact: {same}")


if __name__ == "__main__":
    main()

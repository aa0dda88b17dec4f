"""Peak memory of streaming conversion against the size of the largest teacher shard.

Writes a synthetic Mistral-format checkpoint (random bf16, ~1 GB shards, several GB in all) into a temporary
directory, converts it with ``conversion.convert`` in a child process, and reports the child's peak resident
memory next to the largest shard. The peak is the child's own ``VmHWM`` (``/proc/self/status``, read as it
finishes), not ``getrusage(RUSAGE_CHILDREN).ru_maxrss``: Linux carries the parent's high-water mark into a
forked child's maxrss across exec, and the parent has just written gigabytes of random weights. The goal is a
peak under 1.5x the largest shard, which is what lets a 30 GB 15B teacher convert on a 24 GB machine.
Everything is deleted afterwards.

    python -m benchmarks.conversion_memory            # ~4.6 GiB teacher, 10 layers, 5 replaced
    python -m benchmarks.conversion_memory --layers 4 # quicker

"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import MistralConfig

from conversion.plan import PlannedTensor
from conversion.safetensors_io import INDEX_FILE, write_safetensors

GIB = 1024**3
# Runs the CLI in the child, then prints the child's peak resident memory in KiB.
_CHILD = """
import sys
from conversion.convert import main
code = main(sys.argv[1:])
peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print("PEAK_KIB", int(peak.split()[1]))
sys.exit(code)
"""


def _mistral_tensors(config: MistralConfig) -> list[tuple[str, tuple[int, ...]]]:
    hidden, head_dim = config.hidden_size, config.head_dim
    q_width, kv_width = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    tensors = [("model.embed_tokens.weight", (config.vocab_size, hidden))]
    for layer in range(config.num_hidden_layers):
        prefix = f"model.layers.{layer}."
        tensors += [
            (prefix + "input_layernorm.weight", (hidden,)),
            (prefix + "self_attn.q_proj.weight", (q_width, hidden)),
            (prefix + "self_attn.k_proj.weight", (kv_width, hidden)),
            (prefix + "self_attn.v_proj.weight", (kv_width, hidden)),
            (prefix + "self_attn.o_proj.weight", (hidden, q_width)),
            (prefix + "post_attention_layernorm.weight", (hidden,)),
            (prefix + "mlp.gate_proj.weight", (config.intermediate_size, hidden)),
            (prefix + "mlp.up_proj.weight", (config.intermediate_size, hidden)),
            (prefix + "mlp.down_proj.weight", (hidden, config.intermediate_size)),
        ]
    return tensors + [("model.norm.weight", (hidden,)), ("lm_head.weight", (config.vocab_size, hidden))]


def write_synthetic_teacher(directory: Path, config: MistralConfig, shard_bytes: int) -> list[int]:
    """A sharded bf16 safetensors checkpoint with random weights, written one tensor at a time."""
    shards: list[list[PlannedTensor]] = [[]]
    size = 0
    for name, shape in _mistral_tensors(config):
        numel = 1
        for dim in shape:
            numel *= dim
        if size and size + 2 * numel > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(PlannedTensor(name, shape, torch.bfloat16, lambda shape=shape: (torch.randn(shape) * 0.02).to(torch.bfloat16)))
        size += 2 * numel
    weight_map, sizes = {}, []
    for number, shard in enumerate(shards, start=1):
        file = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(directory / file, shard)
        weight_map.update({entry.name: file for entry in shard})
        sizes.append((directory / file).stat().st_size)
    index = {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}
    (directory / INDEX_FILE).write_text(json.dumps(index))
    config.save_pretrained(directory)
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=10, help="teacher layers (each ~436 MB in bf16)")
    parser.add_argument("--shard-gb", type=float, default=1.0, help="target shard size in GiB")
    args = parser.parse_args()
    config = MistralConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=args.layers,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, dtype="bfloat16",
    )
    replaced = list(range(1, args.layers, 2))
    with tempfile.TemporaryDirectory(prefix="conversion-memory-") as scratch:
        teacher, output = Path(scratch) / "teacher", Path(scratch) / "hybrid"
        teacher.mkdir()
        start = time.time()
        sizes = write_synthetic_teacher(teacher, config, int(args.shard_gb * GIB))
        print(f"teacher: {len(sizes)} shards, {sum(sizes) / GIB:.2f} GiB, largest {max(sizes) / GIB:.2f} GiB "
              f"(written in {time.time() - start:.0f} s)")
        command = [
            sys.executable, "-c", _CHILD, "--teacher", str(teacher), "--output", str(output),
            "--mamba-layers", ",".join(map(str, replaced)), "--no-progress",
        ]
        start = time.time()
        result = subprocess.run(command, check=True, capture_output=True, text=True)
        seconds = time.time() - start
        print(result.stdout.splitlines()[0])
        peak = int(result.stdout.split("PEAK_KIB")[1]) * 1024
        out_sizes = [path.stat().st_size for path in output.glob("*.safetensors")]
        print(f"converted {len(replaced)} of {args.layers} layers in {seconds:.0f} s; output {sum(out_sizes) / GIB:.2f} GiB")
        print(f"peak RSS {peak / GIB:.2f} GiB = {peak / max(sizes):.2f} x the largest shard ({max(sizes) / GIB:.2f} GiB)")


if __name__ == "__main__":
    main()

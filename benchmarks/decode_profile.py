"""Where a decode step's time goes: the GPU kernels of one engine step, by kernel, against the step's wall time.

Why: a captured step that runs at 70-80% of its weight-read roofline loses the rest either inside kernels (a
projection that reads its weight slowly) or between them (one graph node's launch and tail, times ~1,000 nodes
a step). This splits the two: the kernels' own durations come from the profiler (graph replays, so the same
kernels the benchmark times), the step's time from CUDA events around the same replays.

    python benchmarks/decode_profile.py --model teacher --batch 1 --context 2048 --json $OUT/profile.json

Same model shapes and random weights as ``decode_throughput.py``.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.decode_throughput import MODELS, add_model_dims, build, copy_bandwidth, randomise_state, step_bytes, time_steps
from modeling_apriel_h1.engine.decoding import DecodeEngine
from modeling_apriel_h1.engine.sampling import SamplingParams

PROFILED_STEPS = 10


def kernel_table(engine: DecodeEngine, rows: int) -> tuple[dict[str, dict], int]:
    """Per kernel name: launches and microseconds per step, summed over ``PROFILED_STEPS`` graph replays."""
    params = SamplingParams()
    with profile(activities=[ProfilerActivity.CUDA]) as trace:
        for _ in range(PROFILED_STEPS):
            engine.run_step(rows, params)
        torch.cuda.synchronize()
    table: dict[str, dict] = defaultdict(lambda: dict(launches=0.0, us=0.0))
    for event in trace.events():
        if event.device_type == torch.autograd.DeviceType.CUDA and not event.name.startswith("Memcpy"):
            entry = table[event.name[:110]]
            entry["launches"] += 1 / PROFILED_STEPS
            entry["us"] += event.device_time / PROFILED_STEPS
    return dict(table), sum(round(e["launches"]) for e in table.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=list(MODELS), default="teacher")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--top", type=int, default=25)
    add_model_dims(parser)
    parser.add_argument("--json", help="write the table here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA device")
    bandwidth = copy_bandwidth()
    model = build(args.model, args)
    engine = DecodeEngine(model, max_batch_size=args.batch, max_seq_len=args.context + 64)
    randomise_state(engine)
    step_ms = time_steps(engine, args.batch, args.context) * 1e3
    table, launches = kernel_table(engine, args.batch)
    kernel_ms = sum(e["us"] for e in table.values()) / 1e3
    roofline_ms = step_bytes(model, args.batch, args.context) / bandwidth * 1e3
    print(f"{args.model} batch {args.batch} context {args.context}: step {step_ms:.2f} ms, kernels {kernel_ms:.2f} ms "
          f"in {launches} launches, between kernels {step_ms - kernel_ms:.2f} ms, roofline {roofline_ms:.2f} ms")
    print(f"{'us/step':>9} {'launches':>8} {'us each':>8}  kernel")
    for name, entry in sorted(table.items(), key=lambda item: -item[1]["us"])[: args.top]:
        print(f"{entry['us']:9.1f} {entry['launches']:8.1f} {entry['us'] / entry['launches']:8.2f}  {name}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(dict(args=vars(args), step_ms=step_ms, kernel_ms=kernel_ms, launches=launches,
                           roofline_ms=roofline_ms, kernels=table), handle, indent=1)


if __name__ == "__main__":
    main()

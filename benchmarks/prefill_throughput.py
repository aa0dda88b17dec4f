"""Long prompts on one GPU: time to first token and memory of the decode engine's prefill, chunked against
unchunked, serving long prompts from a memory budget, the prefix cache, and where a Mamba layer's prefill time
goes. A transformer teacher against its Apriel-H1 hybrids.

Random weights at Apriel-15B dims by default (hidden 5120, 50 layers, 32 heads / 8 KV heads, head_dim 128, MLP
14336, vocab 131072; bf16 on CUDA); speed does not depend on the weights' values. Mamba layers are spread
evenly (``decode_throughput.evenly_spread``). Models are built one at a time. Every part runs on the CPU too
(fp32, the reference kernels) at tiny dims, which is how ``tests/benchmarks/test_prefill_throughput.py`` smoke
tests it; its timings there mean nothing.

Parts (``--part``, one or more):

- ``ttft``: batch 1, prompts of ``--prompts`` tokens: seconds to the first token (``DecodeEngine.prefill``, the
  median of ``--repeats``) and peak memory above what the engine holds (weights + slot), unchunked
  (``prefill_chunk_size`` = the prompt: the model's forward over the whole prompt into a ``DynamicCache``, which
  the engine then copies into the slot) and chunked (``--chunk``, straight into the slot). A run out of memory
  is recorded as such.
- ``serving``: ``--serve-requests`` prompts of ``--serve-prompt`` tokens, ``--serve-new`` new tokens each, as many
  slots as ``--budget-gib`` holds beside the weights and ``--reserve-gib``: tokens/s over the whole call, p50/p99
  time to first token (``DecodeEngine.first_token_seconds``), chunked and unchunked.
- ``prefix``: ``--prefix-requests`` prompts sharing a ``--prefix-tokens`` prefix with distinct
  ``--suffix-tokens`` suffixes, ``--prefix-new`` new tokens each, with and without the prefix cache
  (``--prefix-cache-gib`` of blocks of ``--block-size``, counted in the budget): tokens/s, p50/p99 time to first
  token, tokens the cache saved.
- ``profile-mamba``: one Mamba layer's prefill at ``--profile-lengths`` tokens, piece by piece: the input
  projections (in_proj, dt_in_proj, dt_proj), the layout copies the kernels need (x and B widened to d_inner,
  time made the unit stride), conv, scan, out_proj; GPU time of each (median of ``--repeats``) and the
  projections' TFLOP/s. Also ``--profile-mamba-prefill``.

    python benchmarks/prefill_throughput.py --part ttft --json $OUT/ttft.json
    python benchmarks/prefill_throughput.py --part serving prefix --json $OUT/serving.json
    python benchmarks/prefill_throughput.py --profile-mamba-prefill --json $OUT/mamba_prefill.json
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.decode_throughput import MODELS, add_model_dims, evenly_spread  # noqa: E402
from modeling_apriel_h1 import AprielH1Config, AprielH1ForCausalLM  # noqa: E402
from modeling_apriel_h1.engine.decode_state import bytes_per_sequence  # noqa: E402
from modeling_apriel_h1.engine.decoding import DecodeEngine  # noqa: E402
from modeling_apriel_h1.engine.prefix_cache import bytes_per_block  # noqa: E402
from modeling_apriel_h1.modeling_apriel_h1 import _repeat_groups  # noqa: E402
from modeling_apriel_h1.ops import resolve_ops  # noqa: E402

GIB = 2**30
PARTS = ("ttft", "serving", "prefix", "profile-mamba")


def build(kind: str, args: argparse.Namespace, device: torch.device, longest: int) -> AprielH1ForCausalLM:
    """A random model for ``kind`` (teacher = no Mamba layer), in bf16 on CUDA and fp32 on the CPU."""
    mamba = evenly_spread(round(MODELS[kind] / 50 * args.layers), args.layers)
    config = AprielH1Config(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        head_dim=args.head_dim, max_position_embeddings=longest, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=False, mamba_dt_rank="auto",
        layer_types=["mamba" if i in mamba else "attention" for i in range(args.layers)],
    )
    torch.manual_seed(0)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype_for(device))
    try:
        with device:
            return AprielH1ForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(default_dtype)


def dtype_for(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def release() -> None:
    """Return freed GPU memory before the next model or engine (callers ``del`` their references first)."""
    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def wall(call: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    started = time.perf_counter()
    call()
    synchronize(device)
    return time.perf_counter() - started


def allocated(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def random_prompt(length: int, vocab: int, seed: int) -> list[int]:
    return torch.randint(3, vocab, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _median(values: list[float]) -> float:
    return percentile(values, 0.5)


def _line(row: dict) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())


def modes(args: argparse.Namespace, prompt: int) -> dict[str, int]:
    """prefill_chunk_size per mode: the whole prompt in one forward, or ``--chunk``."""
    return {name: (prompt if name == "unchunked" else args.chunk) for name in args.modes}


# ------------------------------------------------------------------------------------------ time to first token
def ttft_part(args: argparse.Namespace, device: torch.device) -> list[dict]:
    rows = []
    for kind in args.models:
        model = build(kind, args, device, max(args.prompts) + 64)
        for length in args.prompts:
            prompt = random_prompt(length, args.vocab, seed=length)
            for mode, chunk in modes(args, length).items():
                rows.append(ttft_row(model, kind, prompt, mode, chunk, args, device))
                print(_line(rows[-1]), flush=True)
        del model
        release()
    return rows


def ttft_row(model, kind: str, prompt: list[int], mode: str, chunk: int, args: argparse.Namespace,
             device: torch.device) -> dict:
    row = dict(part="ttft", model=kind, prompt=len(prompt), mode=mode, chunk=chunk)
    engine = None
    try:
        engine = DecodeEngine(model, max_batch_size=1, max_seq_len=len(prompt) + 64, prefill_chunk_size=chunk)
        resident = allocated(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds = [wall(lambda: engine.prefill(prompt), device) for _ in range(args.repeats)]
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
        row.update(seconds=_median(seconds), peak_over_engine_gib=(peak - resident) / GIB,
                   engine_gib=resident / GIB, slot_gib=engine.state.cache_bytes() / GIB)
    except torch.OutOfMemoryError:
        row.update(seconds=None, out_of_memory=True)
    del engine
    release()
    return row


# --------------------------------------------------------------------------------------------------- serving
def slots_for(model, length: int, args: argparse.Namespace, pool_bytes: int = 0) -> int:
    """Slots of ``length`` tokens that the budget holds beside the weights, the reserve and a prefix-cache pool."""
    free = args.budget_gib * GIB - weight_bytes(model) - args.reserve_gib * GIB - pool_bytes
    return max(1, int(free // bytes_per_sequence(model, length)))


def serve(model, prompts: list[list[int]], new_tokens: int, slots: int, chunk: int, device: torch.device,
          **engine_options) -> tuple[dict, DecodeEngine | None]:
    """Every prompt through one engine of ``slots`` slots: tokens/s over the call and time-to-first-token
    percentiles, or ``out_of_memory`` (then no engine)."""
    try:
        engine = DecodeEngine(model, max_batch_size=slots, max_seq_len=max(map(len, prompts)) + new_tokens,
                              prefill_chunk_size=chunk, **engine_options)
        # warm-up (kernels compiled, graphs captured) on a prompt that shares nothing with the measured ones
        engine.generate_batch([random_prompt(len(prompts[0]), model.config.vocab_size, seed=10**6)], max_new_tokens=2)
        seconds = wall(lambda: engine.generate_batch(prompts, max_new_tokens=new_tokens), device)
    except torch.OutOfMemoryError:
        return dict(requests=len(prompts), slots=slots, out_of_memory=True), None
    ttft = engine.first_token_seconds
    return dict(requests=len(prompts), slots=slots, seconds=seconds, tokens_per_s=len(prompts) * new_tokens / seconds,
                ttft_p50=percentile(ttft, 0.5), ttft_p99=percentile(ttft, 0.99)), engine


def serving_part(args: argparse.Namespace, device: torch.device) -> list[dict]:
    rows = []
    length = args.serve_prompt + args.serve_new
    for kind in args.models:
        model = build(kind, args, device, length)
        slots = slots_for(model, length, args)
        count = args.serve_requests or 2 * slots
        slots = min(slots, count)
        prompts = [random_prompt(args.serve_prompt, args.vocab, seed=i) for i in range(count)]
        for mode, chunk in modes(args, args.serve_prompt).items():
            result, engine = serve(model, prompts, args.serve_new, slots, chunk, device)
            rows.append(dict(part="serving", model=kind, mode=mode, chunk=chunk, prompt=args.serve_prompt,
                             new=args.serve_new, budget_gib=args.budget_gib, **result))
            print(_line(rows[-1]), flush=True)
            del engine
            release()
        del model
        release()
    return rows


def prefix_part(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Shared-prefix requests with and without the prefix cache, from the same budget (the pool counts in it)."""
    rows = []
    length = args.prefix_tokens + args.suffix_tokens + args.prefix_new
    prefix = random_prompt(args.prefix_tokens, args.vocab, seed=0)
    prompts = [prefix + random_prompt(args.suffix_tokens, args.vocab, seed=1 + i) for i in range(args.prefix_requests)]
    for kind in args.models:
        model = build(kind, args, device, length)
        block = bytes_per_block(model, args.block_size)
        blocks = max(1, int(args.prefix_cache_gib * GIB // block))
        for cached in (False, True):
            pool = blocks * block if cached else 0
            slots = min(slots_for(model, length, args, pool), args.prefix_requests)
            options = dict(prefix_cache_blocks=blocks, prefix_block_size=args.block_size) if cached else {}
            row = dict(part="prefix", model=kind, prefix_cache=cached, prefix=args.prefix_tokens,
                       suffix=args.suffix_tokens, new=args.prefix_new, pool_gib=pool / GIB,
                       blocks=blocks if cached else 0, block_size=args.block_size)
            result, engine = serve(model, prompts, args.prefix_new, slots, args.chunk, device, **options)
            cache = engine.prefix_cache if engine is not None else None
            rows.append(dict(**row, hit_tokens=cache.hit_tokens if cache else 0, **result))
            print(_line(rows[-1]), flush=True)
            del engine
            release()
        del model
        release()
    return rows


# ------------------------------------------------------------------------------------- a Mamba layer's prefill
def profile_mamba_part(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Each piece of ``AprielH1Mamba.prefill`` timed on its own, in the order the mixer runs them."""
    rows = []
    model = build("H1-40", args, device, max(args.profile_lengths))
    mixer = next(layer.mixer for layer in model.model.layers if layer.is_mamba)
    ops = resolve_ops(device, model.config.kernel_backend)
    for length in args.profile_lengths:
        row = dict(part="profile-mamba", tokens=length, backend=ops.NAME)
        times = profile_mamba_layer(mixer, ops, length, args.repeats, device)
        row.update({f"{name}_ms": seconds * 1e3 for name, seconds in times.items()})
        row["total_ms"] = sum(times.values()) * 1e3
        projections = 2 * length * args.hidden * (mixer.in_proj.out_features + mixer.dt_in_proj.out_features)
        projections += 2 * length * mixer.dt_rank * mixer.d_inner + 2 * length * mixer.d_inner * args.hidden
        row["projection_tflops"] = projections / (times["in_proj"] + times["out_proj"]) / 1e12
        rows.append(row)
        print(_line(row), flush=True)
    del model
    release()
    return rows


@torch.no_grad()
def profile_mamba_layer(mixer, ops, length: int, repeats: int, device: torch.device) -> dict[str, float]:
    hidden = torch.randn(1, length, mixer.in_proj.in_features, device=device, dtype=mixer.in_proj.weight.dtype)
    A = -torch.exp(mixer.A_log.float())
    weight = mixer.conv1d.weight.squeeze(1)
    batch, groups, n = 1, mixer.num_groups, mixer.d_state
    values: dict[str, object] = {}

    def projections():
        values["zxbc"] = mixer.in_proj(hidden).split([mixer.d_inner, mixer.d_xb, mixer.d_xb, mixer.d_inner], dim=-1)
        values["dt"] = mixer._time_step(hidden)

    def layout():
        z, x, B, C = values["zxbc"]
        values["x"] = _repeat_groups(x, n, mixer.repeat_group).transpose(1, 2).contiguous()
        B = _repeat_groups(B, n, mixer.repeat_group).view(batch, length, groups, n)
        values["B"] = B.permute(0, 2, 3, 1).contiguous()
        values["C"] = C.view(batch, length, groups, n).permute(0, 2, 3, 1).contiguous()
        values["z"] = z.transpose(1, 2).contiguous()
        values["dt_t"] = values["dt"].transpose(1, 2).contiguous()

    def conv():
        values["u"], _ = ops.causal_conv1d(values["x"], weight, mixer.conv1d.bias, "silu")

    def scan():
        values["y"], _ = ops.selective_scan(values["u"], values["dt_t"], A, values["B"], values["C"], mixer.D,
                                            values["z"], mixer.dt_proj.bias, delta_softplus=True,
                                            return_last_state=True)

    def out_proj():
        mixer.out_proj(values["y"].transpose(1, 2))

    pieces = dict(in_proj=projections, layout=layout, conv=conv, scan=scan, out_proj=out_proj)
    times = {name: [] for name in pieces}
    for repeat in range(repeats + 1):  # the first round compiles and warms up
        for name, piece in pieces.items():
            seconds = wall(piece, device)
            if repeat:
                times[name].append(seconds)
    return {name: _median(values_) for name, values_ in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", nargs="+", choices=PARTS, default=[])
    parser.add_argument("--profile-mamba-prefill", action="store_true", help="the same as --part profile-mamba")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--modes", nargs="+", default=["unchunked", "chunked"], choices=["unchunked", "chunked"])
    parser.add_argument("--chunk", type=int, default=4096, help="prefill_chunk_size of the chunked runs")
    parser.add_argument("--prompts", type=int, nargs="+", default=[16384, 32768, 65536, 131072])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget-gib", type=float, default=80.0, help="serving and prefix: weights + caches")
    parser.add_argument("--reserve-gib", type=float, default=3.0, help="kept for activations and graphs")
    parser.add_argument("--serve-prompt", type=int, default=32768)
    parser.add_argument("--serve-new", type=int, default=1024)
    parser.add_argument("--serve-requests", type=int, default=0, help="0: twice the slots the budget holds")
    parser.add_argument("--prefix-requests", type=int, default=256)
    parser.add_argument("--prefix-tokens", type=int, default=4096)
    parser.add_argument("--suffix-tokens", type=int, default=256)
    parser.add_argument("--prefix-new", type=int, default=256)
    parser.add_argument("--prefix-cache-gib", type=float, default=2.0, help="the prefix cache's pool")
    parser.add_argument("--block-size", type=int, default=512, help="prefix-cache block (prefix_block_size)")
    parser.add_argument("--profile-lengths", type=int, nargs="+", default=[16384, 32768, 65536])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_model_dims(parser)
    parser.add_argument("--json", help="write every row here")
    args = parser.parse_args(argv)
    parts = list(dict.fromkeys(args.part + (["profile-mamba"] if args.profile_mamba_prefill else [])))
    if not parts:
        parser.error("choose what to measure: --part ttft/serving/prefix/profile-mamba or --profile-mamba-prefill")
    for name in ("chunk", "repeats", "serve_prompt", "serve_new", "prefix_requests", "prefix_tokens", "prefix_new",
                 "block_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} is {getattr(args, name)}; it must be at least 1")
    device = torch.device(args.device)
    runners = dict(ttft=ttft_part, serving=serving_part, prefix=prefix_part, **{"profile-mamba": profile_mamba_part})
    rows = [row for part in parts for row in runners[part](args, device)]
    if args.json:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        with open(args.json, "w") as handle:
            json.dump(dict(device=name, args=vars(args), rows=rows), handle, indent=1)


if __name__ == "__main__":
    main()

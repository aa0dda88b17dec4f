"""Long prompts on one GPU: time to first token and memory of the decode engine's prefill, chunked against
unchunked, serving long prompts from a memory budget, the prefix cache, and where a Mamba layer's prefill time
goes. A transformer teacher against its Apriel-H1 hybrids.

Random weights at Apriel-15B dims by default (hidden 5120, 50 layers, 32 heads / 8 KV heads, head_dim 128, MLP
14336, vocab 131072; bf16 on CUDA); speed does not depend on the weights' values. Mamba layers are spread
evenly (``decode_throughput.evenly_spread``). Each model is built once and runs every part asked for, one model
at a time (``--part-seconds`` caps the time a part may take per model: rows it would start later are written as
skipped). Every part runs on the CPU too (fp32, the reference kernels) at tiny dims (``--tiny``), which is how
``tests/benchmarks/test_prefill_throughput.py`` and ``benchmarks/prefill_gpu_run.sh --tiny`` smoke test it; its
timings there mean nothing. Every row records the command, the device, the library versions and the date;
``--jsonl`` appends each row as soon as it is measured, so a run cut short keeps what it measured.

Parts (``--part``, one or more):

- ``ttft``: batch 1, prompts of ``--prompts`` tokens: seconds to the first token (``DecodeEngine.prefill``, the
  median of ``--repeats``, after a short warm-up prefill in each mode) and peak memory above what the engine
  holds (weights + slot), unchunked (``prefill_chunk_size`` = the prompt: the model's forward over the whole
  prompt into a ``DynamicCache``, which the engine then copies into the slot) and chunked (``--chunk``, straight
  into the slot), in the order of ``--modes``. A run out of memory is recorded as such.
- ``serving``: ``--serve-requests`` prompts of ``--serve-prompt`` tokens, ``--serve-new`` new tokens each, as many
  slots as ``--budget-gib`` holds beside the weights and ``--reserve-gib``: tokens/s over the whole call, p50/p99
  time to first token (``DecodeEngine.first_token_seconds``), in each of ``--serve-modes``.
- ``prefix``: ``--prefix-requests`` prompts sharing a ``--prefix-tokens`` prefix with distinct
  ``--suffix-tokens`` suffixes, ``--prefix-new`` new tokens each, with and without the prefix cache
  (``--prefix-cache-gib`` of blocks of ``--block-size``, counted in the budget): tokens/s, p50/p99 time to first
  token, tokens the cache saved.
- ``profile-mamba``: one Mamba layer's prefill (``AprielH1Mamba.prefill``, as the chunked prefill calls it) at
  ``--profile-lengths`` tokens in each of ``--profile-layouts`` (``prefill_layout``: token-major, the
  reference, against channel-major), whole (in one call, and in calls of ``--chunk`` tokens that carry the
  states, as the chunked prefill makes them) and piece by piece: the projections (in_proj, dt_in_proj, dt_proj,
  with x and B widened to d_inner), the layout copies that give the kernels time as the unit stride, conv, scan,
  out_proj; GPU time of each (median of ``--profile-repeats``) and the projections' TFLOP/s. A model of one
  Mamba and one attention layer is enough for it. At ``--scan-tile-lengths``, the forward scan kernel alone for
  candidate tiles (chunk, warps): an inference prefill stores no checkpoints, so its chunk need not be the one the
  backward shares. Also ``--profile-mamba-prefill``.

The models' Mamba layers prefill in ``--prefill-layout`` (token-major, the default, unless asked).

    python benchmarks/prefill_throughput.py --part ttft --json $OUT/ttft.json
    python benchmarks/prefill_throughput.py --part serving prefix --json $OUT/serving.json
    python benchmarks/prefill_throughput.py --profile-mamba-prefill --json $OUT/mamba_prefill.json
    bash benchmarks/prefill_gpu_run.sh      # every part on one GPU within a time limit, rows under $OUT
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import platform
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.decode_throughput import MODELS, add_model_dims, evenly_spread  # noqa: E402
from modeling_apriel_h1 import AprielH1Config, AprielH1ForCausalLM  # noqa: E402
from modeling_apriel_h1.configuration_apriel_h1 import PREFILL_LAYOUTS  # noqa: E402
from modeling_apriel_h1.engine.decode_state import bytes_per_sequence  # noqa: E402
from modeling_apriel_h1.engine.decoding import DecodeEngine  # noqa: E402
from modeling_apriel_h1.engine.prefix_cache import bytes_per_block  # noqa: E402
from modeling_apriel_h1.layer_types import MAMBA  # noqa: E402
from modeling_apriel_h1.ops import resolve_ops  # noqa: E402

GIB = 2**30
PARTS = ("ttft", "serving", "prefix", "profile-mamba")
MODEL_PARTS = ("ttft", "prefix", "serving")  # in the order each model runs them
# --tiny: the dims of the CPU smoke tests (tests/modeling/tiny.py's shape, 4 layers)
TINY_DIMS = dict(layers=4, hidden=64, intermediate=128, heads=4, kv_heads=2, head_dim=16, vocab=97)


def build(kind: str, args: argparse.Namespace, device: torch.device, longest: int,
          layer_types: list[str] | None = None) -> AprielH1ForCausalLM:
    """A random model for ``kind`` (teacher = no Mamba layer), in bf16 on CUDA and fp32 on the CPU; its Mamba
    layers prefill in ``--prefill-layout``. ``layer_types`` overrides the depth and the pattern."""
    if layer_types is None:
        mamba = evenly_spread(round(MODELS[kind] / 50 * args.layers), args.layers)
        layer_types = ["mamba" if i in mamba else "attention" for i in range(args.layers)]
    config = AprielH1Config(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=len(layer_types), num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        head_dim=args.head_dim, max_position_embeddings=longest, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=False, mamba_dt_rank="auto", layer_types=layer_types,
        prefill_layout=args.prefill_layout,
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
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items() if k != "run")


def modes(names: list[str], args: argparse.Namespace, prompt: int) -> dict[str, int]:
    """prefill_chunk_size per mode: the whole prompt in one forward, or ``--chunk``."""
    return {name: (prompt if name == "unchunked" else args.chunk) for name in names}


def run_record(device: torch.device, argv: list[str]) -> dict:
    """What every row carries: the command (this script with ``argv``), the device, the library versions, the
    commit and the date."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                                cwd=Path(__file__).resolve().parents[1]).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return dict(
        command=shlex.join(["python", "benchmarks/prefill_throughput.py", *argv]),
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        torch=torch.__version__, cuda=torch.version.cuda, triton=triton_version, transformers=transformers.__version__,
        python=platform.python_version(), commit=commit,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )


class Rows:
    """The rows measured so far: each printed, appended to ``--jsonl`` at once, stamped with the run record."""

    def __init__(self, args: argparse.Namespace, device: torch.device, argv: list[str]):
        self.rows: list[dict] = []
        self.run = run_record(device, argv)
        self.jsonl = args.jsonl

    def add(self, row: dict) -> None:
        row = {**row, "run": self.run}
        self.rows.append(row)
        print(_line(row), flush=True)
        if self.jsonl:
            with open(self.jsonl, "a") as handle:
                handle.write(json.dumps(row) + "\n")


class PartClock:
    """A part's time allowance for one model (``--part-seconds``): rows are started only while it lasts."""

    def __init__(self, seconds: float | None):
        self.deadline = None if seconds is None else time.perf_counter() + seconds

    def expired(self) -> bool:
        return self.deadline is not None and time.perf_counter() > self.deadline

    def each(self, rows: list[dict]) -> Iterator[dict]:
        """Yield the rows to measure while time is left; the rest come back marked skipped."""
        for row in rows:
            if self.expired():
                row.update(skipped="part time allowance spent")
            yield row


@contextlib.contextmanager
def failure_recorded(row: dict) -> Iterator[None]:
    """Run one row's measurement; running out of memory or failing makes the row say so (the traceback goes to
    stderr), and the next row runs: one GPU run must not lose every later row to one failure."""
    try:
        yield
    except torch.OutOfMemoryError:
        row.update(out_of_memory=True)
    except Exception as error:  # noqa: BLE001 (any failure is recorded, then the run goes on)
        traceback.print_exc()
        row.update(error=f"{type(error).__name__}: {error}"[:500])
    release()


# ------------------------------------------------------------------------------------------ time to first token
def ttft_part(model, kind: str, args: argparse.Namespace, device: torch.device, rows: Rows, clock: PartClock) -> None:
    """Every prompt in every mode, then (a model with Mamba layers) ``--other-layout-prompts`` chunked in the
    other prefill layout, for the end-to-end comparison of the two in the same run."""
    layout = model.config.prefill_layout
    planned = [dict(part="ttft", model=kind, prompt=length, mode=mode, chunk=chunk, prefill_layout=layout)
               for length in args.prompts for mode, chunk in modes(args.modes, args, length).items()]
    if MAMBA in model.config.layer_types:
        other = next(name for name in PREFILL_LAYOUTS if name != layout)
        planned += [dict(part="ttft", model=kind, prompt=length, mode="chunked", chunk=args.chunk, prefill_layout=other)
                    for length in args.other_layout_prompts]
    for row in clock.each(planned):
        if "skipped" not in row:
            with failure_recorded(row):
                if model.config.prefill_layout != row["prefill_layout"] or row is planned[0]:
                    model.config.prefill_layout = row["prefill_layout"]  # every mixer reads the model's config
                    warm_up_ttft(model, args, device)
                ttft_row(model, random_prompt(row["prompt"], args.vocab, seed=row["prompt"]), row, args, device)
        rows.add(row)
    model.config.prefill_layout = layout


def warm_up_ttft(model, args: argparse.Namespace, device: torch.device) -> None:
    """One short prefill per mode, so that the first measured row holds no kernel compilation."""
    length = min(2 * args.chunk, min(args.prompts))
    for mode, chunk in modes(args.modes, args, length).items():
        engine = DecodeEngine(model, max_batch_size=1, max_seq_len=length + 8, prefill_chunk_size=chunk,
                              cuda_graphs=False)
        engine.prefill(random_prompt(length, args.vocab, seed=7))
        synchronize(device)
        del engine
        release()


def ttft_row(model, prompt: list[int], row: dict, args: argparse.Namespace, device: torch.device) -> None:
    engine = None
    try:
        engine = DecodeEngine(model, max_batch_size=1, max_seq_len=len(prompt) + 64, prefill_chunk_size=row["chunk"],
                              cuda_graphs=False)
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


def serving_part(model, kind: str, args: argparse.Namespace, device: torch.device, rows: Rows,
                 clock: PartClock) -> None:
    length = args.serve_prompt + args.serve_new
    slots = slots_for(model, length, args)
    count = args.serve_requests or 2 * slots
    prompts = [random_prompt(args.serve_prompt, args.vocab, seed=i) for i in range(count)]
    planned = [dict(part="serving", model=kind, mode=mode, chunk=chunk, prompt=args.serve_prompt,
                    new=args.serve_new, budget_gib=args.budget_gib, budget_slots=slots,
                    prefill_layout=model.config.prefill_layout)
               for mode, chunk in modes(args.serve_modes, args, args.serve_prompt).items()]
    for row in clock.each(planned):
        if "skipped" not in row:
            with failure_recorded(row):
                result, engine = serve(model, prompts, args.serve_new, min(slots, count), row["chunk"], device)
                row.update(result)
                del engine
        rows.add(row)


def prefix_part(model, kind: str, args: argparse.Namespace, device: torch.device, rows: Rows,
                clock: PartClock) -> None:
    """Shared-prefix requests with and without the prefix cache, from the same budget (the pool counts in it)."""
    length = args.prefix_tokens + args.suffix_tokens + args.prefix_new
    prefix = random_prompt(args.prefix_tokens, args.vocab, seed=0)
    prompts = [prefix + random_prompt(args.suffix_tokens, args.vocab, seed=1 + i) for i in range(args.prefix_requests)]
    block = bytes_per_block(model, args.block_size)
    blocks = max(1, int(args.prefix_cache_gib * GIB // block))
    planned = [dict(part="prefix", model=kind, prefix_cache=cached, prefix=args.prefix_tokens,
                    suffix=args.suffix_tokens, new=args.prefix_new, pool_gib=blocks * block / GIB if cached else 0.0,
                    blocks=blocks if cached else 0, block_size=args.block_size,
                    prefill_layout=model.config.prefill_layout)
               for cached in (False, True)]
    for row in clock.each(planned):
        if "skipped" not in row:
            with failure_recorded(row):
                pool = blocks * block if row["prefix_cache"] else 0
                slots = min(slots_for(model, length, args, pool), args.prefix_requests)
                options = dict(prefix_cache_blocks=blocks, prefix_block_size=args.block_size) if pool else {}
                result, engine = serve(model, prompts, args.prefix_new, slots, args.chunk, device, **options)
                cache = engine.prefix_cache if engine is not None else None
                row.update(hit_tokens=cache.hit_tokens if cache else 0, **result)
                del engine
        rows.add(row)


# ------------------------------------------------------------------------------------- a Mamba layer's prefill
def profile_mamba_part(args: argparse.Namespace, device: torch.device, rows: Rows, clock: PartClock) -> None:
    """``AprielH1Mamba.prefill`` whole and each of its pieces timed on its own, for every layout, one length at a
    time (both layouts of a length side by side before the next length)."""
    model = build("H1-40", args, device, max(args.profile_lengths), layer_types=["mamba", "attention"])
    mixer = model.model.layers[0].mixer
    ops = resolve_ops(device, model.config.kernel_backend)
    planned = [dict(part="profile-mamba", tokens=length, prefill_layout=layout, backend=ops.NAME)
               for length in args.profile_lengths for layout in args.profile_layouts]
    for row in clock.each(planned):
        if "skipped" not in row:
            mixer.config.prefill_layout = row["prefill_layout"]
            with failure_recorded(row):
                times = profile_mamba_layer(mixer, ops, row["tokens"], args.profile_repeats, device, args.chunk)
                row.update({f"{name}_ms": seconds * 1e3 for name, seconds in times.items()})
                row["pieces_ms"] = 1e3 * sum(seconds for name, seconds in times.items()
                                             if not name.startswith("prefill"))
                widths = (mixer.in_proj.in_features * (mixer.in_proj.out_features + mixer.dt_in_proj.out_features)
                          + mixer.dt_rank * mixer.d_inner + mixer.d_inner * mixer.out_proj.out_features)
                flops = 2 * row["tokens"] * widths
                row["projection_tflops"] = flops / (times["projections"] + times["out_proj"]) / 1e12
        rows.add(row)
        if (ops.NAME == "triton" and row["tokens"] in args.scan_tile_lengths
                and row["prefill_layout"] == args.profile_layouts[-1] and "skipped" not in row):
            scan_tiles_rows(mixer, ops, row["tokens"], args, device, rows)
    del model, mixer
    release()


# (chunk, warps) of the forward scan; the first is SCAN_TILES (chunk 64, 1 warp: 128 registers, 16 programs per SM)
SCAN_TILE_CANDIDATES = [(64, 1), (128, 1), (64, 2), (128, 2), (256, 2), (32, 1)]


def scan_tiles_rows(mixer, ops, length: int, args: argparse.Namespace, device: torch.device, rows: Rows) -> None:
    """The forward scan kernel alone at batch 1 and ``length`` for candidate tiles: an inference prefill stores no
    checkpoints for a backward, so its chunk need not be the backward's."""
    from modeling_apriel_h1.ops.triton_kernels.scan_config import ScanTiles
    from modeling_apriel_h1.ops.triton_kernels.selective_scan_fwd import selective_scan_forward

    with failure_recorded({}), torch.no_grad():
        hidden = torch.randn(1, length, mixer.in_proj.in_features, device=device, dtype=mixer.in_proj.weight.dtype)
        z, x, B, C, dt = mixer._project_channel_major(hidden, None)
        u, _ = ops.causal_conv1d(x, mixer.conv1d.weight.squeeze(1), mixer.conv1d.bias, "silu")
        A = -torch.exp(mixer.A_log.float())
        scan_args = (u, dt, A, B, C, mixer.D.float(), z, mixer.dt_proj.bias.float(), True, None, False)
        for chunk, warps in SCAN_TILE_CANDIDATES:
            row = dict(part="profile-scan-tiles", tokens=length, chunk=chunk, forward_warps=warps)
            with failure_recorded(row):
                tiles = ScanTiles(chunk, warps, warps)
                seconds = [wall(lambda: selective_scan_forward(*scan_args, tiles=tiles), device)
                           for _ in range(args.profile_repeats + 1)][1:]
                row.update(scan_ms=_median(seconds) * 1e3)
            rows.add(row)


@torch.no_grad()
def profile_mamba_layer(mixer, ops, length: int, repeats: int, device: torch.device, chunk: int) -> dict[str, float]:
    """Seconds (median of ``repeats``, after a warm-up round) of the mixer's prefill in the mixer's
    ``prefill_layout``: in one call, in calls of ``chunk`` tokens that carry the states (as the engine's
    chunked prefill calls it), and each piece of the one call."""
    hidden = torch.randn(1, length, mixer.in_proj.in_features, device=device, dtype=mixer.in_proj.weight.dtype)
    A = -torch.exp(mixer.A_log.float())
    weight = mixer.conv1d.weight.squeeze(1)
    channel_major = mixer.config.prefill_layout == "channel_major"
    values: dict[str, object] = {}

    def prefill():
        mixer.prefill(hidden)

    def prefill_chunked():
        conv, ssm = None, None
        for start in range(0, length, chunk):
            _, conv, ssm = mixer.prefill(hidden[:, start:start + chunk], conv, ssm)

    def projections():
        project = mixer._project_channel_major if channel_major else mixer._project_token_major
        values["inputs"] = project(hidden, None)

    def layout():  # what the kernels' unit-time-stride check copies (nothing in the channel-major layout)
        values["inputs"] = [t if t.stride(-1) == 1 else t.contiguous() for t in values["inputs"]]

    def conv():
        values["u"], _ = ops.causal_conv1d(values["inputs"][1], weight, mixer.conv1d.bias, "silu")

    def scan():
        z, _, B, C, dt = values["inputs"]
        values["y"], _ = ops.selective_scan(values["u"], dt, A, B, C, mixer.D, z, mixer.dt_proj.bias,
                                            delta_softplus=True, return_last_state=True)

    def out_proj():
        mixer.out_proj(values["y"].transpose(1, 2))

    pieces = dict(prefill=prefill, prefill_chunked=prefill_chunked, projections=projections, layout=layout, conv=conv,
                  scan=scan, out_proj=out_proj)
    times = {name: [] for name in pieces}
    for repeat in range(repeats + 1):  # the first round compiles and warms up
        for name, piece in pieces.items():
            seconds = wall(piece, device)
            if repeat:
                times[name].append(seconds)
    values.clear()
    return {name: _median(values_) for name, values_ in times.items()}


# ------------------------------------------------------------------------------------------------------ summary
def summarize(rows: list[dict]) -> str:
    """Markdown tables of ``--jsonl`` rows: each part, with the hybrids' ratios to the teacher (the profile: the
    channel-major layout's time over the token-major one's)."""

    def cell(row: dict | None, key: str, digits: int = 3) -> str:
        if row is None:
            return ""
        if row.get("skipped"):
            return "skipped"
        if row.get("out_of_memory"):
            return "OOM"
        value = row.get(key)
        return "" if value is None else f"{value:.{digits}g}"

    def ratio(row: dict | None, base: dict | None, key: str) -> str:
        if not row or not base or not row.get(key) or not base.get(key):
            return ""
        return f" ({row[key] / base[key]:.2f}x)"

    out = []
    if rows:
        run = rows[0]["run"]
        out.append(f"{run['device']}; torch {run['torch']} (CUDA {run['cuda']}), triton {run['triton']}, "
                   f"transformers {run['transformers']}; commit {run['commit']}; {run['date']}\n")
    profile = [row for row in rows if row["part"] == "profile-mamba"]
    if profile:
        pieces = ("prefill", "prefill_chunked", "projections", "layout", "conv", "scan", "out_proj")
        out += ["| tokens | layout | " + " | ".join(f"{piece} ms" for piece in pieces) + " | projections TFLOP/s |",
                "| ---: | --- |" + " ---: |" * (len(pieces) + 1)]
        by_key = {(row["tokens"], row["prefill_layout"]): row for row in profile}
        for row in profile:
            base = by_key.get((row["tokens"], "token_major"))
            speed = ratio(row, base, "prefill_ms") if row["prefill_layout"] != "token_major" else ""
            chunked = ratio(row, base, "prefill_chunked_ms") if row["prefill_layout"] != "token_major" else ""
            out.append(f"| {row['tokens']} | {row['prefill_layout']} | {cell(row, 'prefill_ms')}{speed} | "
                       f"{cell(row, 'prefill_chunked_ms')}{chunked} | "
                       + " | ".join(cell(row, f"{piece}_ms") for piece in pieces[2:])
                       + f" | {cell(row, 'projection_tflops')} |")
        out.append("")
    tiles = [row for row in rows if row["part"] == "profile-scan-tiles"]
    if tiles:
        out += ["| tokens | scan chunk | warps | forward scan ms |", "| ---: | ---: | ---: | ---: |"]
        first = {}
        for row in tiles:
            base = first.setdefault(row["tokens"], row)
            out.append(f"| {row['tokens']} | {row['chunk']} | {row['forward_warps']} | {cell(row, 'scan_ms')}"
                       f"{ratio(row, base, 'scan_ms') if row is not base else ''} |")
        out.append("")
    ttft = [row for row in rows if row["part"] == "ttft"]
    if ttft:
        models = list(dict.fromkeys(row["model"] for row in ttft))
        by_key = {(row["prompt"], row["mode"], row["prefill_layout"], row["model"]): row for row in ttft}
        teacher = {(row["prompt"], row["mode"]): row for row in ttft if row["model"] == "teacher"}
        out += ["| prompt | mode | Mamba prefill | " + " | ".join(f"{model} s" for model in models)
                + " | peak over engine GiB (" + " / ".join(models) + ") |",
                "| ---: | --- | --- |" + " ---: |" * (len(models) + 1)]
        for prompt, mode, layout in dict.fromkeys((row["prompt"], row["mode"], row["prefill_layout"]) for row in ttft):
            base = teacher.get((prompt, mode))
            cells = [base if model == "teacher" else by_key.get((prompt, mode, layout, model)) for model in models]
            out.append(f"| {prompt} | {mode} | {layout} | " + " | ".join(
                cell(row, "seconds") + (ratio(row, base, "seconds") if row is not base else "") for row in cells)
                + " | " + " / ".join(cell(row, "peak_over_engine_gib", 2) for row in cells) + " |")
        out.append("")
    prefix = [row for row in rows if row["part"] == "prefix"]
    if prefix:
        out += ["| model | prefix cache | requests | slots | tokens/s | TTFT p50 s | TTFT p99 s | cached tokens |",
                "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        by_key = {(row["model"], row["prefix_cache"]): row for row in prefix}
        for row in prefix:
            speed = ratio(row, by_key.get((row["model"], False)), "tokens_per_s") if row["prefix_cache"] else ""
            out.append(f"| {row['model']} | {row['prefix_cache']} | {row.get('requests', '')} | "
                       f"{row.get('slots', '')} | {cell(row, 'tokens_per_s')}{speed} | {cell(row, 'ttft_p50')} | "
                       f"{cell(row, 'ttft_p99')} | {row.get('hit_tokens', '')} |")
        out.append("")
    serving = [row for row in rows if row["part"] == "serving"]
    if serving:
        out += ["| model | mode | budget slots | requests | tokens/s | TTFT p50 s | TTFT p99 s |",
                "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        by_key = {(row["model"], row["mode"]): row for row in serving}
        for row in serving:
            base = by_key.get(("teacher", row["mode"]))
            speed = ratio(row, base, "tokens_per_s") if row is not base else ""
            out.append(f"| {row['model']} | {row['mode']} | {row['budget_slots']} | {row.get('requests', '')} | "
                       f"{cell(row, 'tokens_per_s')}{speed} | {cell(row, 'ttft_p50')} | {cell(row, 'ttft_p99')} |")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------------------- main
def parse_part_seconds(items: list[str]) -> dict[str, float]:
    """``PART=SECONDS`` pairs of ``--part-seconds``."""
    allowances = {}
    for item in items:
        part, _, seconds = item.partition("=")
        if part not in PARTS or not seconds.replace(".", "", 1).isdigit():
            raise ValueError(f"--part-seconds {item!r}: write PART=SECONDS with PART one of {', '.join(PARTS)}")
        allowances[part] = float(seconds)
    return allowances


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", nargs="+", choices=PARTS, default=[])
    parser.add_argument("--profile-mamba-prefill", action="store_true", help="the same as --part profile-mamba")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--modes", nargs="+", default=["unchunked", "chunked"], choices=["unchunked", "chunked"],
                        help="ttft")
    parser.add_argument("--serve-modes", nargs="+", default=["unchunked", "chunked"],
                        choices=["unchunked", "chunked"])
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
    parser.add_argument("--profile-layouts", nargs="+", default=list(PREFILL_LAYOUTS),
                        choices=PREFILL_LAYOUTS)
    parser.add_argument("--profile-repeats", type=int, default=5)
    parser.add_argument("--scan-tile-lengths", type=int, nargs="*", default=[65536],
                        help="profile lengths at which the forward scan kernel is also timed for candidate tiles "
                             "(Triton only)")
    parser.add_argument("--prefill-layout", default="token_major", choices=PREFILL_LAYOUTS,
                        help="the models' Mamba prefill layout (ttft, serving, prefix)")
    parser.add_argument("--other-layout-prompts", type=int, nargs="*", default=[],
                        help="ttft: also these prompts, chunked, in the other prefill layout (hybrids only)")
    parser.add_argument("--part-seconds", nargs="+", default=[], metavar="PART=SECONDS",
                        help="per model, start no row of PART after SECONDS (its rows are written as skipped)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_model_dims(parser)
    parser.add_argument("--tiny", action="store_true", help="the tiny dims of the CPU smoke tests: " + ", ".join(
        f"{name}={value}" for name, value in TINY_DIMS.items()))
    parser.add_argument("--json", help="write every row here at the end")
    parser.add_argument("--jsonl", help="append each row here as soon as it is measured")
    parser.add_argument("--summarize", metavar="JSONL", help="print markdown tables of these rows, measure nothing")
    args = parser.parse_args(argv)
    if args.summarize:
        with open(args.summarize) as handle:
            print(summarize([json.loads(line) for line in handle if line.strip()]), end="")
        return
    parts = list(dict.fromkeys(args.part + (["profile-mamba"] if args.profile_mamba_prefill else [])))
    if not parts:
        parser.error("choose what to measure: --part ttft/serving/prefix/profile-mamba or --profile-mamba-prefill")
    for name in ("chunk", "repeats", "profile_repeats", "serve_prompt", "serve_new", "prefix_requests",
                 "prefix_tokens", "prefix_new", "block_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} is {getattr(args, name)}; it must be at least 1")
    try:
        allowances = parse_part_seconds(args.part_seconds)
    except ValueError as error:
        parser.error(str(error))
    if args.tiny:
        vars(args).update(TINY_DIMS)
    device = torch.device(args.device)
    rows = Rows(args, device, sys.argv[1:] if argv is None else argv)
    if "profile-mamba" in parts:
        profile_mamba_part(args, device, rows, PartClock(allowances.get("profile-mamba")))
    runners = dict(ttft=ttft_part, prefix=prefix_part, serving=serving_part)
    model_parts = [part for part in MODEL_PARTS if part in parts]
    if model_parts:
        longest = max([*args.prompts, args.serve_prompt + args.serve_new,
                       args.prefix_tokens + args.suffix_tokens + args.prefix_new]) + 64
        for kind in args.models:
            started = time.perf_counter()
            model = build(kind, args, device, longest)
            synchronize(device)
            print(f"built {kind} in {time.perf_counter() - started:.1f} s", flush=True)
            for part in model_parts:
                runners[part](model, kind, args, device, rows, PartClock(allowances.get(part)))
            del model
            release()
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(dict(run=rows.run, args=vars(args), rows=rows.rows), handle, indent=1)


if __name__ == "__main__":
    main()

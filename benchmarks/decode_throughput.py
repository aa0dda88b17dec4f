"""Decode throughput of a transformer teacher and its Apriel-H1 hybrids on one GPU: the decode engine against
stock ``generate()``, at equal batch and as the paper serves (largest batch a memory budget holds).

Random bf16 weights at Apriel-15B dims by default (hidden 5120, 50 layers, 32 heads / 8 KV heads, head_dim 128,
MLP 14336, vocab 131072); speed does not depend on the weights' values. Mamba layers are spread evenly (a
stand-in for an importance ranking). Models are built directly on the GPU, one at a time.

Parts (each fits one 10-minute device command at 15B dims):

- ``engine``: the engine's step time (CUDA-graph replays, all rows running) at batch 1/16/64 and context 2k/8k,
  with the KV cache filled to that length; the first call's build + capture time; and serving throughput: the
  largest batch whose weights + caches fit ``--budget-gib`` (allocated for real), the step time measured at
  several context lengths over a ``--serve-prompt`` + ``--serve-new`` sequence, integrated over the whole
  generation (trapezoid rule), so tokens/s = batch * new tokens / summed step time.
- ``stock``: ``generate()`` with the dynamic cache at batch 1/16/64 (prompt ``--prompt``) for ``--dynamic`` models, and with
  ``cache_implementation="static"`` (generate compiles the step itself) for ``--static`` models.

Every row has its roofline: the bytes a step must move (weights read once, live KV read, Mamba state read and
written) over the device-to-device copy bandwidth measured in the same run. ``--ssm-state-dtypes float32 bfloat16``
runs the hybrids' engine rows once per Mamba state dtype (``DecodeEngine(ssm_state_dtype=...)``; the teacher has
no Mamba state and runs once).

``--shape qwen3-14b`` measures at Qwen3-14B's shape instead (40 layers, hidden 5120, 40 heads / 8 KV heads,
head_dim 128, MLP 17408, vocab 151936, per-head q/k norms; the hybrids keep 30/50 and 40/50 of the layers as
Mamba, i.e. 24 and 32 of 40, and the stock static-cache teacher is transformers' Qwen3); explicit width options
still override a shape's values.

    python benchmarks/decode_throughput.py --part engine --json $OUT/engine.json
    python benchmarks/decode_throughput.py --part stock --json $OUT/stock.json
    python benchmarks/decode_throughput.py --part engine --shape qwen3-14b --batches 1 --contexts 2048 --json $OUT/qwen3.json
"""

from __future__ import annotations

import argparse
import gc
import json
import time

import torch
from transformers import MistralConfig, MistralForCausalLM, Qwen3Config, Qwen3ForCausalLM

from modeling_apriel_h1 import AprielH1Config, AprielH1ForCausalLM
from modeling_apriel_h1.engine.decode_state import bytes_per_sequence
from modeling_apriel_h1.engine.decoding import DecodeEngine
from modeling_apriel_h1.engine.sampling import SamplingParams
from modeling_apriel_h1.layer_types import decoder_layers, is_mamba_layer

GIB = 2**30
MODELS = {"teacher": 0, "H1-30": 30, "H1-40": 40}  # Mamba layers of 50 (scaled to --layers)
SSM_STATE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Teacher shapes other than Apriel-15B's (the option defaults): the values ``--shape`` gives the model options
SHAPES = {
    "apriel-15b": dict(layers=50, hidden=5120, intermediate=14336, heads=32, kv_heads=8, head_dim=128, vocab=131072,
                       qk_norm=False),
    "qwen3-14b": dict(layers=40, hidden=5120, intermediate=17408, heads=40, kv_heads=8, head_dim=128, vocab=151936,
                      qk_norm=True),
}


def evenly_spread(count: int, layers: int) -> list[int]:
    """``count`` layers spread over the depth, never the first or last (a stand-in for an importance ranking)."""
    if count == 0:
        return []
    step = (layers - 2) / count
    return sorted({1 + int(i * step) for i in range(count)})


def dims(args: argparse.Namespace) -> dict:
    return dict(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        head_dim=args.head_dim, max_position_embeddings=32768, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=False,
    )


def attention_fields(args: argparse.Namespace) -> dict:
    """The AprielH1Config attention fields beyond the widths (q/k norms for a Qwen3 shape)."""
    return dict(attention_qk_norm=getattr(args, "qk_norm", False))


def add_model_dims(parser: argparse.ArgumentParser, layer_widths_only: bool = False) -> None:
    """The model-shape options (Apriel-15B's by default), shared with ``decode_profile.py`` and, the widths inside
    a layer only (no layer count or vocabulary), ``decode_kernel_tiles.py``."""
    if not layer_widths_only:
        parser.add_argument("--layers", type=int, default=50)
    parser.add_argument("--hidden", type=int, default=5120)
    parser.add_argument("--intermediate", type=int, default=14336)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    if not layer_widths_only:
        parser.add_argument("--vocab", type=int, default=131072)


def build(kind: str, args: argparse.Namespace, stock_mistral: bool = False) -> torch.nn.Module:
    """A random bf16 model made on the GPU: the teacher (optionally as stock transformers: Mistral, or Qwen3 for a
    q/k-norm shape) or a hybrid."""
    mamba = evenly_spread(round(MODELS[kind] / 50 * args.layers), args.layers)
    torch.manual_seed(0)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            if stock_mistral and getattr(args, "qk_norm", False):
                return Qwen3ForCausalLM(Qwen3Config(**dims(args))).eval()
            if stock_mistral:
                return MistralForCausalLM(MistralConfig(**dims(args), sliding_window=None)).eval()
            layer_types = ["mamba" if i in mamba else "attention" for i in range(args.layers)]
            config = AprielH1Config(**dims(args), **attention_fields(args), layer_types=layer_types, mamba_dt_rank="auto")
            return AprielH1ForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(default_dtype)


def release() -> None:
    """Return freed GPU memory (callers ``del`` their references first; CUDA graphs hold their pool until then)."""
    gc.collect()
    torch.cuda.empty_cache()


def copy_bandwidth() -> float:
    """Bytes read + written per second by a 4 GiB device-to-device copy (median of 10)."""
    source = torch.empty(2 * GIB, dtype=torch.uint8, device="cuda").random_()
    target = torch.empty_like(source)
    times = []
    for _ in range(12):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        target.copy_(source)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del source, target
    release()
    return 2 * 2 * GIB / sorted(times[2:])[len(times[2:]) // 2]


def step_bytes(model: torch.nn.Module, rows: int, context: int, ssm_dtype: torch.dtype = torch.float32) -> float:
    """Bytes one decode step must move: every weight but the embedding table read once, each row's live KV read,
    the Mamba conv window and state (``ssm_dtype``) read and written."""
    config = model.config
    weights = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "embed_tokens" not in n)
    kv_per_token = 2 * config.num_key_value_heads * config.head_dim * 2  # K and V, bf16
    moved = 0
    for layer in decoder_layers(model):
        if is_mamba_layer(layer):
            mixer = layer.mixer
            moved += rows * mixer.d_inner * (mixer.d_state * ssm_dtype.itemsize + mixer.d_conv * 2) * 2
        else:
            moved += rows * context * kv_per_token
    return weights + moved


def fill_cache(engine: DecodeEngine, rows: int, context: int) -> None:
    """Make rows 0..rows-1 running sequences with ``context`` tokens in the cache (random KV and states)."""
    state = engine.state
    state.clear_bookkeeping()
    state.lengths[:rows] = context
    state.active[:rows] = True
    state.budget[:rows] = state.max_len  # never stops on budget while timed
    state.last_token[:rows] = torch.randint(3, engine.model.config.vocab_size, (rows,), device="cuda")


def time_steps(engine: DecodeEngine, rows: int, context: int, repeats: int = 20) -> float:
    """Median seconds of one step (graph replay) with ``rows`` running sequences at ``context`` tokens."""
    fill_cache(engine, rows, context)
    params = SamplingParams()
    for _ in range(3):
        engine.run_step(rows, params)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        engine.run_step(rows, params)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def randomise_state(engine: DecodeEngine) -> None:
    """Random KV and Mamba states: timings on zeros can flatter the hardware (METHOD.md)."""
    for tensor in [*engine.state.keys.values(), *engine.state.values.values(), *engine.state.conv.values()]:
        tensor.normal_()
    for tensor in engine.state.ssm.values():
        tensor.normal_().mul_(0.1)


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def engine_part(args: argparse.Namespace, bandwidth: float) -> list[dict]:
    rows_out = []
    for kind in args.models:
        model = build(kind, args)
        state_dtypes = args.ssm_state_dtypes if MODELS[kind] else args.ssm_state_dtypes[:1]  # teacher: no Mamba state
        for state_name in state_dtypes:
            rows_out += engine_rows(model, kind, args, bandwidth, state_name)
        del model
        release()
    return rows_out


def engine_rows(model: torch.nn.Module, kind: str, args: argparse.Namespace, bandwidth: float,
                state_name: str) -> list[dict]:
    """Equal-batch rows, the first call and the serving row of one model with its Mamba state in ``state_name``."""
    ssm_dtype = SSM_STATE_DTYPES[state_name]
    label = dict(model=kind, ssm_state=state_name if MODELS[kind] else "-")
    rows_out = []
    torch.cuda.synchronize()
    started = time.perf_counter()
    engine = DecodeEngine(model, max_batch_size=max(args.batches), max_seq_len=max(args.contexts) + 64,
                          ssm_state_dtype=ssm_dtype)
    first_call = time.perf_counter() - started
    randomise_state(engine)
    for rows in args.batches:
        for context in args.contexts:
            seconds = time_steps(engine, rows, context)
            roofline = step_bytes(model, rows, context, ssm_dtype) / bandwidth
            rows_out.append(dict(part="equal", **label, batch=rows, context=context, ms_per_step=seconds * 1e3,
                                 tokens_per_s=rows / seconds, roofline_ms=roofline * 1e3,
                                 of_roofline=roofline / seconds))
            print(_line(rows_out[-1]), flush=True)
    rows_out.append(dict(part="first_call", **label, seconds=first_call, buckets=engine.buckets,
                         attention=engine.attention_name))
    print(f"{kind}: engine build + capture of {len(engine.buckets)} buckets: {first_call:.1f} s "
          f"(attention: {engine.attention_name})", flush=True)
    del engine
    release()
    rows_out.append(serving(model, label, args, bandwidth, ssm_dtype))
    return rows_out


def serving(model: torch.nn.Module, label: dict, args: argparse.Namespace, bandwidth: float,
            ssm_dtype: torch.dtype) -> dict:
    """Largest batch that fits the budget, step time integrated over a whole long generation."""
    length = args.serve_prompt + args.serve_new
    per_sequence = bytes_per_sequence(model, length, ssm_dtype)
    free = args.budget_gib * GIB - weight_bytes(model) - args.reserve_gib * GIB
    batch = int(free // per_sequence)
    engine = DecodeEngine(model, max_batch_size=batch, max_seq_len=length, ssm_state_dtype=ssm_dtype)
    randomise_state(engine)
    allocated = torch.cuda.memory_allocated() / GIB
    points = sorted({args.serve_prompt, *[int(f * length) for f in (0.25, 0.5, 0.75)], length - 32})
    step_at = {context: time_steps(engine, batch, context) for context in points}
    # trapezoid over the generated positions: total seconds for serve_new steps
    total, previous = 0.0, None
    for context in points:
        if previous is not None:
            total += (context - previous) * (step_at[context] + step_at[previous]) / 2
        previous = context
    total *= args.serve_new / (points[-1] - points[0])
    mean_context = args.serve_prompt + args.serve_new / 2
    roofline = step_bytes(model, batch, int(mean_context), ssm_dtype) / bandwidth
    row = dict(part="serving", **label, batch=batch, budget_gib=args.budget_gib, allocated_gib=allocated,
               tokens_per_s=batch * args.serve_new / total, ms_per_step_mean=total / args.serve_new * 1e3,
               step_ms_at={str(c): s * 1e3 for c, s in step_at.items()}, roofline_ms_mean_context=roofline * 1e3,
               of_roofline=roofline / (total / args.serve_new))
    print(_line(row), flush=True)
    del engine
    release()
    return row


def stock_part(args: argparse.Namespace, bandwidth: float) -> list[dict]:
    rows_out = []
    for kind in args.dynamic:
        model = build(kind, args)
        for rows in args.batches:
            rows_out.append(time_generate(model, kind, rows, args, bandwidth, "dynamic"))
        del model
        release()
    for kind in args.static:
        model = build(kind, args, stock_mistral=kind == "teacher")
        rows_out.append(time_generate(model, kind, args.static_batch, args, bandwidth, "static"))
        del model
        release()
    return rows_out


def time_generate(model, kind: str, rows: int, args: argparse.Namespace, bandwidth: float, cache: str) -> dict:
    """ms per decode step of stock generate(): (time of generate with N+1 new tokens - time of its prefill) / N.

    Every call asks for the same length, so a static cache keeps its shapes and the compiled step is reused (the
    first call, which compiles, is reported apart). The prefill is timed as the eager forward generate runs first.
    """
    ids = torch.randint(3, args.vocab, (rows, args.prompt), device="cuda")
    new = args.new_tokens + 1
    kwargs = dict(do_sample=False, pad_token_id=0, eos_token_id=None, max_new_tokens=new, min_new_tokens=new)
    if cache == "static":
        kwargs["cache_implementation"] = "static"
    first_call = _wall(lambda: model.generate(ids, **kwargs))
    with torch.no_grad():
        prefill = _median([_wall(lambda: model(ids, use_cache=True, logits_to_keep=1)) for _ in range(args.repeats)])
    total = _median([_wall(lambda: model.generate(ids, **kwargs)) for _ in range(args.repeats)])
    seconds = (total - prefill) / args.new_tokens
    roofline = step_bytes(model, rows, args.prompt + args.new_tokens // 2) / bandwidth
    row = dict(part=f"stock_{cache}", model=kind, batch=rows, context=args.prompt, ms_per_step=seconds * 1e3,
               tokens_per_s=rows / seconds, roofline_ms=roofline * 1e3, of_roofline=roofline / seconds,
               first_call_s=first_call, prefill_s=prefill)
    print(_line(row), flush=True)
    return row


def _wall(call) -> float:
    torch.cuda.synchronize()
    started = time.perf_counter()
    call()
    torch.cuda.synchronize()
    return time.perf_counter() - started


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _line(row: dict) -> str:
    fields = [f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items() if k != "step_ms_at"]
    return " ".join(fields)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, with ``--shape``'s model values as the defaults that explicit width options override."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["engine", "stock"], required=True)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--contexts", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--budget-gib", type=float, default=80.0, help="serving: weights + caches (the paper's H100)")
    parser.add_argument("--reserve-gib", type=float, default=3.0, help="serving: kept for activations and graphs")
    parser.add_argument("--serve-prompt", type=int, default=128)
    parser.add_argument("--serve-new", type=int, default=16384)
    parser.add_argument("--prompt", type=int, default=2048, help="stock generate(): prompt length")
    parser.add_argument("--new-tokens", type=int, default=32, help="stock generate(): timed steps")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dynamic", nargs="*", default=list(MODELS), choices=list(MODELS),
                        help="stock generate() with the dynamic cache for these models")
    parser.add_argument("--static", nargs="*", default=["teacher"], choices=list(MODELS),
                        help="stock generate() with cache_implementation='static' (compiled) for these models")
    parser.add_argument("--static-batch", type=int, default=64)
    parser.add_argument("--ssm-state-dtypes", nargs="+", default=["float32"], choices=list(SSM_STATE_DTYPES),
                        help="engine part: run the hybrids once per Mamba state dtype (DecodeEngine(ssm_state_dtype))")
    add_model_dims(parser)
    parser.add_argument("--shape", choices=list(SHAPES), default="apriel-15b",
                        help="the teacher's shape: sets the model options' defaults (see the module docstring)")
    parser.add_argument("--json", help="write every row here")
    shape, _ = parser.parse_known_args(argv)
    parser.set_defaults(**SHAPES[shape.shape])
    return parser.parse_args(argv)


def main() -> None:
    args = parse_arguments()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA device")
    bandwidth = copy_bandwidth()
    print(f"device {torch.cuda.get_device_name()}, copy bandwidth {bandwidth / 1e12:.2f} TB/s (read + write)", flush=True)
    rows = engine_part(args, bandwidth) if args.part == "engine" else stock_part(args, bandwidth)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(dict(device=torch.cuda.get_device_name(), copy_bandwidth=bandwidth, args=vars(args), rows=rows),
                      handle, indent=1)


if __name__ == "__main__":
    main()

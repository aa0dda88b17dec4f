"""Time the Mamba-1 kernels at Apriel-H1's shapes: our Triton kernels vs mamba-ssm (when importable) and the
PyTorch reference (only where its Python loop over time is affordable).

    PYTHONPATH=. python benchmarks/kernel_speed.py --markdown results.md   # the tables, printed and written as markdown
    PYTHONPATH=. python benchmarks/kernel_speed.py --sweep-tiles           # time candidate tile sizes (scan, conv step)
    PYTHONPATH=. python benchmarks/kernel_speed.py --ops conv decode       # only some of the tables
    PYTHONPATH=. python benchmarks/kernel_speed.py --resets                # Triton scan and conv on packed rows vs not

Shapes: dim 4096, N 16, 256 B/C groups (16 channels per group), conv width 4, bf16 activations, fp32 A/D/dt
bias and state. Times are medians of CUDA-event timings after warm-up (``triton.testing.do_bench``, which
also flushes the L2 cache before each repetition). Decoding steps are memory-bound and far shorter than a
launch, so they run as CUDA graphs over enough independent input sets to overflow the L2 cache, and are
reported as achieved bytes/s against a measured device-to-device copy.
"""

from __future__ import annotations

import argparse
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import triton
from triton.testing import do_bench

from modeling_apriel_h1.ops import reference
from modeling_apriel_h1.ops import triton_backend as tri
from modeling_apriel_h1.ops.triton_kernels.causal_conv1d_bwd import causal_conv1d_backward
from modeling_apriel_h1.ops.triton_kernels.causal_conv1d_fwd import causal_conv1d_forward
from modeling_apriel_h1.ops.triton_kernels.causal_conv1d_update import causal_conv1d_update_step
from modeling_apriel_h1.ops.triton_kernels.conv_document_starts import conv_document_starts
from modeling_apriel_h1.ops.triton_kernels.scan_config import ScanTiles
from modeling_apriel_h1.ops.triton_kernels.selective_scan_bwd import selective_scan_backward
from modeling_apriel_h1.ops.triton_kernels.selective_scan_fwd import selective_scan_forward

DIM, N_STATES, GROUPS, CONV_WIDTH = 4096, 16, 256, 4
SCAN_SHAPES = [(1, 4096), (1, 16384), (8, 4096), (8, 16384)]  # (batch, L)
REFERENCE_SHAPE = (1, 512)  # the reference loops over time in Python: only a short sequence
DECODE_BATCHES = [1, 8, 64]
ACTIVATION_DTYPE = torch.bfloat16
OP_GROUPS = ("scan", "conv", "decode")  # the tables, in the order they are timed


def load_mamba_ssm() -> tuple[Callable | None, Callable | None, str]:
    """mamba-ssm's CUDA scan and Triton decoding step, or Nones and the reason they are missing."""
    try:
        import mamba_ssm
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update
    except ImportError as error:
        return None, None, f"not importable ({error})"
    return selective_scan_fn, selective_state_update, f"mamba-ssm {mamba_ssm.__version__}"


def load_causal_conv1d() -> tuple[Callable | None, Callable | None, str]:
    """causal-conv1d's convolution and decoding step in our signatures, or Nones and the reason they are missing."""
    try:
        import causal_conv1d
        from causal_conv1d import causal_conv1d_fn, causal_conv1d_update
    except ImportError as error:
        return None, None, f"not importable ({error})"

    def conv(x, weight, bias):
        return causal_conv1d_fn(x, weight, bias, activation="silu"), None

    def update(x, conv_state, weight, bias):
        return causal_conv1d_update(x, conv_state, weight, bias, "silu")

    return conv, update, f"causal-conv1d {causal_conv1d.__version__}"


def median_ms(fn: Callable[[], object], grad_to_none: list[torch.Tensor] | None = None) -> float:
    return do_bench(fn, warmup=25, rep=200, grad_to_none=grad_to_none, return_mode="median")


def copy_bandwidth() -> float:
    """Bytes/s of a 1 GiB device-to-device copy, counting bytes read plus bytes written."""
    src = torch.randn(1 << 28, device="cuda")
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


def scan_inputs(batch: int, length: int, requires_grad: bool = False) -> dict[str, torch.Tensor]:
    """Random inputs in a trained mixer's ranges: A = -(1..N), dt around 1e-3..1e-1 after the softplus."""
    f32, act = dict(device="cuda", dtype=torch.float32), dict(device="cuda", dtype=ACTIVATION_DTYPE)
    dt = torch.exp(torch.empty(DIM, **f32).uniform_(math.log(1e-3), math.log(1e-1)))
    inputs = {
        "u": torch.randn(batch, DIM, length, **act),
        "delta": torch.randn(batch, DIM, length, **act) * 0.5,
        "A": -torch.arange(1, N_STATES + 1, **f32).repeat(DIM, 1),
        "B": torch.randn(batch, GROUPS, N_STATES, length, **act),
        "C": torch.randn(batch, GROUPS, N_STATES, length, **act),
        "D": torch.randn(DIM, **f32),
        "z": torch.randn(batch, DIM, length, **act),
        "delta_bias": dt + torch.log(-torch.expm1(-dt)),
    }
    return {k: v.requires_grad_(requires_grad) for k, v in inputs.items()}


@dataclass
class Row:
    op: str
    impl: str
    batch: int
    length: int | str
    ms: float | None
    note: str = ""


def scan_call(scan: Callable, inputs: dict[str, torch.Tensor], dy: torch.Tensor | None) -> Callable[[], object]:
    """One call of ``scan`` on ``inputs``: a forward under no_grad when ``dy`` is None, else forward + backward."""
    if dy is None:
        def forward_only():
            with torch.no_grad():
                return scan(**inputs, delta_softplus=True)

        return forward_only
    return lambda: scan(**inputs, delta_softplus=True).backward(dy)


def time_scan(scan: Callable, batch: int, length: int, backward: bool) -> float:
    """Median ms of one forward (under no_grad) or of forward + backward through all inputs."""
    inputs = scan_inputs(batch, length, requires_grad=backward)
    dy = torch.randn(batch, DIM, length, device="cuda", dtype=ACTIVATION_DTYPE) if backward else None
    return median_ms(scan_call(scan, inputs, dy), grad_to_none=list(inputs.values()) if backward else None)


def scan_rows(mamba_scan: Callable | None, mamba_note: str) -> list[Row]:
    rows = []
    shapes = [REFERENCE_SHAPE] + SCAN_SHAPES
    for batch, length in shapes:
        for backward in (False, True):
            op = "scan fwd+bwd" if backward else "scan fwd"
            ours = time_scan(tri.selective_scan, batch, length, backward)
            theirs = time_scan(mamba_scan, batch, length, backward) if mamba_scan else None
            ratio = f"{ours / theirs:.2f}x mamba-ssm" if theirs else ""
            rows.append(Row(op, "triton", batch, length, ours, ratio))
            rows.append(Row(op, "mamba-ssm", batch, length, theirs, "" if theirs else mamba_note))
            if (batch, length) == REFERENCE_SHAPE:
                rows.append(Row(op, "reference", batch, length, time_scan(reference.selective_scan, batch, length, backward)))
            torch.cuda.empty_cache()
    return rows


def conv_rows(causal_conv: Callable | None, causal_note: str) -> list[Row]:
    rows = []
    impls = [("triton", tri.causal_conv1d), ("reference", reference.causal_conv1d)]
    if causal_conv:
        impls.insert(1, ("causal-conv1d", causal_conv))
    for batch, length in SCAN_SHAPES:
        x = torch.randn(batch, DIM, length, device="cuda", dtype=ACTIVATION_DTYPE)
        weight = torch.randn(DIM, CONV_WIDTH, device="cuda", dtype=ACTIVATION_DTYPE) / 2
        bias = torch.randn(DIM, device="cuda", dtype=ACTIVATION_DTYPE)
        dout = torch.randn_like(x)
        for impl, conv in impls:
            with torch.no_grad():
                rows.append(Row("conv fwd", impl, batch, length, median_ms(lambda: conv(x, weight, bias))))
            leaves = [t.detach().requires_grad_(True) for t in (x, weight, bias)]
            rows.append(Row("conv fwd+bwd", impl, batch, length,
                            median_ms(lambda: conv(*leaves)[0].backward(dout), grad_to_none=leaves)))
    if not causal_conv:
        rows.append(Row("conv", "causal-conv1d", 0, "-", None, causal_note))
    return rows


def packed_document_starts(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """(batch, length) bool starts of documents with log-uniform lengths in [200, 8192] tokens (reasoning traces),
    packed back to back; the last document of a row is cut at the row's end."""
    generator = torch.Generator().manual_seed(seed)
    starts = torch.zeros(batch, length, dtype=torch.bool)
    for row in range(batch):
        position = 0
        while position < length:
            starts[row, position] = True
            log_length = torch.empty(1).uniform_(math.log(200), math.log(8192), generator=generator)
            position += int(math.exp(log_length.item()))
    return starts.cuda()


def paired_ms(plain: Callable[[], object], packed: Callable[[], object], grad_to_none: list[torch.Tensor] | None = None,
              rounds: int = 2) -> tuple[float, float]:
    """Median ms of two variants timed alternately (plain, packed, plain, packed, ...), the lower median of
    each kept: a ratio near 1.05 should not depend on which variant ran while the clocks settled."""
    plain_ms, packed_ms = [], []
    for _ in range(rounds):
        plain_ms.append(median_ms(plain, grad_to_none))
        packed_ms.append(median_ms(packed, grad_to_none))
    return min(plain_ms), min(packed_ms)


def reset_rows() -> list[Row]:
    """Our Triton scan and conv on packed rows (document starts given) against the same rows without starts:
    what the reset costs (goal: within 5%).

    The scan is timed as the mixer calls it (its bool starts reach the kernels as a uint8 view, no copy). The conv
    is timed twice: its kernels alone (forward; backward and the fix-up launch beside it), given the starts as they read
    them (``conv_document_starts``, computed beforehand) and replayed from a CUDA graph (at batch 1 the Python
    that launches them can take longer than they run), with a row for that preparation alone, which a model runs
    once per forward for all its Mamba layers; and the op as a training forward calls it (no final conv state),
    given the same starts tensor at every call as a model's layers are, so that the preparation runs at the
    first call only (``triton_backend._conv_starts``), its gradients set to None first: eagerly, which at small
    shapes times the Python launching it, and replayed from a CUDA graph, which times the GPU's work."""
    rows = []
    for batch, length in SCAN_SHAPES:
        starts = packed_document_starts(batch, length)
        note = f"{int(starts.sum())} documents"
        for backward in (False, True):
            op = "scan fwd+bwd" if backward else "scan fwd"
            inputs = scan_inputs(batch, length, requires_grad=backward)
            dy = torch.randn(batch, DIM, length, device="cuda", dtype=ACTIVATION_DTYPE) if backward else None
            grads = list(inputs.values()) if backward else None
            packed_scan = functools.partial(tri.selective_scan, document_starts=starts)
            plain, packed = paired_ms(scan_call(tri.selective_scan, inputs, dy), scan_call(packed_scan, inputs, dy),
                                      grads)
            rows.append(Row(op, "triton", batch, length, plain))
            rows.append(Row(op, "triton, packed", batch, length, packed, f"{packed / plain:.3f}x unpacked; {note}"))
            del inputs, dy, grads
            torch.cuda.empty_cache()
        rows += conv_reset_rows(batch, length, starts, note)
    return rows


def conv_reset_rows(batch: int, length: int, starts: torch.Tensor, note: str) -> list[Row]:
    x = torch.randn(batch, DIM, length, device="cuda", dtype=ACTIVATION_DTYPE)
    weight = torch.randn(DIM, CONV_WIDTH, device="cuda", dtype=ACTIVATION_DTYPE) / 2
    bias = torch.randn(DIM, device="cuda", dtype=ACTIVATION_DTYPE)
    dout = torch.randn_like(x)
    kernel_document = conv_document_starts(starts)
    leaves = [t.detach().requires_grad_(True) for t in (x, weight, bias)]

    def kernels(document, backward):
        if not backward:
            return lambda: causal_conv1d_forward(x, weight, bias, True, None, document)

        return lambda: causal_conv1d_backward(dout, x, weight, bias, True, None, document)

    def op(document_starts, backward):
        if not backward:
            def forward():
                with torch.no_grad():
                    return tri.causal_conv1d(x, weight, bias, document_starts=document_starts,
                                             return_final_states=False)
            return forward

        def forward_backward():
            for leaf in leaves:
                leaf.grad = None
            tri.causal_conv1d(*leaves, document_starts=document_starts, return_final_states=False)[0].backward(dout)
        return forward_backward

    rows = []
    variants = (("kernel", kernels, kernel_document, True), ("op", op, starts, False),
                ("op", op, starts, True))
    for label, build, packed_row, replayed in variants:
        for backward in (False, True):
            name = f"conv {label} {('bwd' if label == 'kernel' else 'fwd+bwd') if backward else 'fwd'}"
            if label == "op":
                name += ", replayed" if replayed else ", eager"
            plain, packed = build(None, backward), build(packed_row, backward)
            if replayed:
                plain, packed = captured(plain), captured(packed)
            plain, packed = paired_ms(plain, packed)
            rows.append(Row(name, "triton", batch, length, plain))
            rows.append(Row(name, "triton, packed", batch, length, packed, f"{packed / plain:.3f}x unpacked; {note}"))
            if label == "kernel" and not backward:
                starts_ms = median_ms(lambda: conv_document_starts(starts))
                rows.append(Row("conv starts", "triton, packed", batch, length, starts_ms,
                                f"{starts_ms / plain:.3f}x the unpacked kernel fwd; once per forward of a model"))
    return rows


def captured(fn: Callable[[], object], warm_up: Callable[[], object] | None = None) -> Callable[[], None]:
    """``fn`` recorded as a CUDA graph, returned as the graph's replay: timing it measures the GPU's work and the
    gaps between its kernels, not the Python that launches them. ``warm_up`` (default: ``fn``) runs first on a
    side stream, so that the kernels compile outside the capture."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        (warm_up or fn)()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def graph_ms_per_call(step: Callable[[dict[str, torch.Tensor]], object], input_sets: list[dict[str, torch.Tensor]]) -> float:
    """Median ms per call of ``step`` over input sets run back to back in one CUDA graph (no launch gaps)."""
    def every_set():
        for inputs in input_sets:
            step(inputs)

    def first_sets():
        for inputs in input_sets[:3]:
            step(inputs)

    return median_ms(captured(every_set, first_sets)) / len(input_sets)


def sets_to_overflow_l2(bytes_per_set: int) -> int:
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    return max(8, min(1024, math.ceil(4 * l2 / bytes_per_set)))


def state_update_inputs(batch: int) -> dict[str, torch.Tensor]:
    f32, act = dict(device="cuda", dtype=torch.float32), dict(device="cuda", dtype=ACTIVATION_DTYPE)
    return {
        "state": torch.randn(batch, DIM, N_STATES, **f32),
        "x": torch.randn(batch, DIM, **act), "dt": torch.randn(batch, DIM, **act) * 0.5,
        "A": -torch.rand(DIM, N_STATES, **f32) * N_STATES,
        "B": torch.randn(batch, GROUPS, N_STATES, **act), "C": torch.randn(batch, GROUPS, N_STATES, **act),
        "D": torch.randn(DIM, **f32), "z": torch.randn(batch, DIM, **act), "dt_bias": torch.randn(DIM, **f32) * 0.1,
    }


def moved_bytes(inputs: dict[str, torch.Tensor], written: list[str], output_bytes: int) -> int:
    """Fewest bytes a step must move: every input read once, the in-place ones written back, the output written."""
    read = sum(t.numel() * t.element_size() for t in inputs.values())
    return read + sum(inputs[k].numel() * inputs[k].element_size() for k in written) + output_bytes


def mamba_state_update(mamba_update: Callable) -> Callable:
    """mamba-ssm's Triton step with channels viewed as (groups, channels per group) heads, as our wrapper does."""
    per = DIM // GROUPS

    def step(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus):
        batch = x.shape[0]
        return mamba_update(state.view(batch, GROUPS, per, N_STATES), x.view(batch, GROUPS, per),
                            dt.view(batch, GROUPS, per), A.view(GROUPS, per, N_STATES), B, C, D.view(GROUPS, per),
                            z.view(batch, GROUPS, per), dt_bias.view(GROUPS, per), dt_softplus=dt_softplus)
    return step


def conv_update_inputs(batch: int) -> list[dict[str, torch.Tensor]]:
    """Independent input sets for the conv decoding step, enough of them to overflow the L2 cache."""
    first = {"x": torch.randn(batch, DIM, device="cuda", dtype=ACTIVATION_DTYPE),
             "conv_state": torch.randn(batch, DIM, CONV_WIDTH, device="cuda", dtype=ACTIVATION_DTYPE),
             "weight": torch.randn(DIM, CONV_WIDTH, device="cuda", dtype=ACTIVATION_DTYPE),
             "bias": torch.randn(DIM, device="cuda", dtype=ACTIVATION_DTYPE)}
    total = moved_bytes(first, ["conv_state"], batch * DIM * 2)
    return [first] + [{k: v.clone() for k, v in first.items()} for _ in range(sets_to_overflow_l2(total) - 1)]


def same_size_copy_ms(moved: int) -> float:
    """ms per device-to-device copy that moves ``moved`` bytes (read + written), timed like the decoding steps:
    the floor for a kernel of that size, launch and tail included."""
    src = torch.empty(moved // 2, device="cuda", dtype=torch.uint8)
    sets = [{"src": src.clone(), "dst": torch.empty_like(src)} for _ in range(sets_to_overflow_l2(moved))]
    return graph_ms_per_call(lambda inputs: inputs["dst"].copy_(inputs["src"]), sets)


def bandwidth_note(moved: int, ms: float, copy_bytes_per_s: float, copy_ms: float) -> str:
    rate = moved / (ms * 1e-3)
    return (f"{rate / 1e9:.0f} GB/s = {100 * rate / copy_bytes_per_s:.0f}% of copy, "
            f"{100 * copy_ms / ms:.0f}% of a same-size copy")


def decode_rows(copy_bytes_per_s: float, mamba_update: Callable | None, mamba_note: str,
                causal_update: Callable | None) -> list[Row]:
    rows = []
    for batch in DECODE_BATCHES:
        sample = state_update_inputs(batch)
        output_bytes = batch * DIM * 2
        total = moved_bytes(sample, ["state"], output_bytes)
        copy_ms = same_size_copy_ms(total)
        input_sets = [state_update_inputs(batch) for _ in range(sets_to_overflow_l2(total))]
        impls = [("triton", tri.selective_state_update), ("reference", reference.selective_state_update)]
        if mamba_update:
            impls.insert(1, ("mamba-ssm", mamba_state_update(mamba_update)))
        for impl, update in impls:
            ms = graph_ms_per_call(lambda inputs: update(**inputs, dt_softplus=True), input_sets)
            rows.append(Row("decode ssm step", impl, batch, 1, ms, bandwidth_note(total, ms, copy_bytes_per_s, copy_ms)))
        if not mamba_update:
            rows.append(Row("decode ssm step", "mamba-ssm", batch, 1, None, mamba_note))

        conv_sets = conv_update_inputs(batch)
        conv_total = moved_bytes(conv_sets[0], ["conv_state"], output_bytes)
        conv_copy_ms = same_size_copy_ms(conv_total)
        conv_impls = [("triton", tri.causal_conv1d_update), ("reference", reference.causal_conv1d_update)]
        if causal_update:
            conv_impls.insert(1, ("causal-conv1d", causal_update))
        for impl, update in conv_impls:
            ms = graph_ms_per_call(lambda inputs: update(**inputs), conv_sets)
            rows.append(Row("decode conv step", impl, batch, 1, ms,
                            bandwidth_note(conv_total, ms, copy_bytes_per_s, conv_copy_ms)))
    return rows


def sweep_tiles() -> None:
    """Time the forward and backward scan kernels alone for candidate tiles (both kernels use one chunk)."""
    candidates = [ScanTiles(64, 1, 1), ScanTiles(64, 2, 2), ScanTiles(128, 1, 1), ScanTiles(128, 2, 2),
                  ScanTiles(32, 1, 1), ScanTiles(256, 4, 4)]
    print(f"{'batch':>5} {'L':>6} {'chunk':>5} {'fwd warps':>9} {'bwd warps':>9} {'fwd ms':>8} {'bwd ms':>8}")
    for batch, length in [(1, 16384), (8, 4096)]:
        inputs = scan_inputs(batch, length)
        dy = torch.randn(batch, DIM, length, device="cuda", dtype=ACTIVATION_DTYPE)
        args = [inputs[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
        for tiles in candidates:
            fwd = median_ms(lambda: selective_scan_forward(*args, True, None, False, tiles))
            _, _, states = selective_scan_forward(*args, True, None, True, tiles)
            bwd = median_ms(lambda: selective_scan_backward(dy, None, *args, True, states, False, tiles))
            print(f"{batch:>5} {length:>6} {tiles.chunk:>5} {tiles.forward_num_warps:>9} "
                  f"{tiles.backward_num_warps:>9} {fwd:>8.3f} {bwd:>8.3f}", flush=True)


def sweep_conv_update(copy_bytes_per_s: float) -> None:
    """Achieved bandwidth of the conv decoding step for candidate (channels per program, warps)."""
    print(f"{'batch':>5} {'block_d':>7} {'warps':>5} {'us':>7} {'% of copy':>9} {'% of same-size copy':>19}")
    for batch in DECODE_BATCHES:
        sets = conv_update_inputs(batch)
        total = moved_bytes(sets[0], ["conv_state"], batch * DIM * 2)
        copy_ms = same_size_copy_ms(total)
        for block_d, num_warps in [(64, 2), (128, 4), (256, 4), (512, 8)]:
            ms = graph_ms_per_call(lambda inputs: causal_conv1d_update_step(
                inputs["x"], inputs["conv_state"], inputs["weight"], inputs["bias"], True, block_d, num_warps), sets)
            print(f"{batch:>5} {block_d:>7} {num_warps:>5} {ms * 1e3:>7.2f} "
                  f"{100 * total / (ms * 1e-3) / copy_bytes_per_s:>8.0f}% {100 * copy_ms / ms:>18.0f}%", flush=True)


def markdown_table(rows: list[Row]) -> str:
    lines = ["| op | impl | batch | L | ms | note |", "| --- | --- | ---: | ---: | ---: | --- |"]
    for row in rows:
        ms = f"{row.ms:.4f}" if row.ms is not None and row.ms < 0.1 else (f"{row.ms:.3f}" if row.ms is not None else "-")
        lines.append(f"| {row.op} | {row.impl} | {row.batch or '-'} | {row.length} | {ms} | {row.note} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markdown", help="also write the tables to this markdown file")
    parser.add_argument("--sweep-tiles", action="store_true", help="time candidate tile sizes of the scan and the conv step instead")
    parser.add_argument("--ops", nargs="+", choices=OP_GROUPS, default=list(OP_GROUPS),
                        help="which tables to time (default: all)")
    parser.add_argument("--resets", action="store_true",
                        help="time the Triton scan and conv on packed rows (document starts) vs unpacked instead")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/kernel_speed.py needs a CUDA device")
    torch.manual_seed(0)
    if args.sweep_tiles:
        sweep_tiles()
        sweep_conv_update(copy_bandwidth())
        return
    if args.resets:
        print(f"device: {torch.cuda.get_device_name()}; torch {torch.__version__}; triton {triton.__version__}; "
              f"dim {DIM}, N {N_STATES}, {GROUPS} groups, conv width {CONV_WIDTH}, {ACTIVATION_DTYPE}; packed rows: "
              "documents of log-uniform 200-8192 tokens", flush=True)
        table = markdown_table(reset_rows())
        print(table)
        if args.markdown:
            with open(args.markdown, "w") as f:
                f.write(table + "\n")
        return

    mamba_scan, mamba_update, mamba_note = load_mamba_ssm()
    causal_conv, causal_update, causal_note = load_causal_conv1d()
    device = torch.cuda.get_device_name()
    bandwidth = copy_bandwidth()
    header = (f"device: {device}; torch {torch.__version__}; triton {triton.__version__}; {mamba_note}; {causal_note}\n"
              f"device-to-device copy: {bandwidth / 1e12:.2f} TB/s (bytes read + written)\n"
              f"shapes: dim {DIM}, N {N_STATES}, {GROUPS} groups, conv width {CONV_WIDTH}, {ACTIVATION_DTYPE} activations")
    print(header, flush=True)
    rows = []
    if "scan" in args.ops:
        rows += scan_rows(mamba_scan, mamba_note)
        print(markdown_table(rows), flush=True)
    if "conv" in args.ops:
        rows += conv_rows(causal_conv, causal_note)
    if "decode" in args.ops:
        rows += decode_rows(bandwidth, mamba_update, mamba_note, causal_update)
    table = markdown_table(rows)
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(header.replace("\n", "  \n") + "\n\n" + table + "\n")


if __name__ == "__main__":
    main()

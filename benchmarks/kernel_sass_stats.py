"""Compile the scan and conv kernels for an H100 (sm_90) on any machine, GPU or not, and count what matters.

    python benchmarks/kernel_sass_stats.py                 # Apriel's shapes: N 16, chunk from scan_config
    python benchmarks/kernel_sass_stats.py --chunk 32      # another chunk length
    python benchmarks/kernel_sass_stats.py --document-starts   # also the packed-row scans and conv launches

Needs only ``triton`` (its wheel carries ptxas and cuobjdump). The scan kernels behave as bound by instruction
issue, so registers, spills to local memory, and the count of machine instructions per kernel (shuffles and
exp2 among them) tracked their speed: the backward that spilled and rebuilt its forward scan twice (4152 instructions,
392 bytes of stack) ran 8.9 ms at b=1, L=16k on an H200; the same kernel in one layout (2880, no stack) 5.0 ms.
This is how that was found without spending GPU time; see benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import inspect
import re
import subprocess
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from modeling_apriel_h1.ops.triton_kernels import (
    causal_conv1d_bwd,
    causal_conv1d_fwd,
    conv_document_fixup,
    conv_document_starts,
    selective_scan_bwd,
    selective_scan_fwd,
)
from modeling_apriel_h1.ops.triton_kernels.scan_config import SCAN_TILES

BF16_POINTERS = {"u_ptr", "delta_ptr", "z_ptr", "dy_ptr", "B_ptr", "C_ptr", "y_ptr", "du_ptr", "d_delta_ptr", "dz_ptr",
                 "x_ptr", "weight_ptr", "bias_ptr", "history_ptr", "out_ptr", "dout_ptr", "dx_ptr"}
# the packed-row pointers' types as the launchers pass them, by parameter name (each kernel takes some of them)
DOCUMENT_POINTERS = {"starts_ptr": "*u8", "since_ptr": "*u8", "through_ptr": "*i32", "tiles_ptr": "*i32",
                     "tile_starts_ptr": "*i32", "positions_ptr": "*i32", "counts_ptr": "*i32"}
SASS_PATTERNS = {
    "global loads": r"\bLDG\b",
    "shuffles": r"\bSHFL\b",
    "exp2": r"MUFU\.EX2",
    "local ld/st": r"\b(?:LDL|STL)\b",
    "shared ld/st": r"\b(?:LDS|STS)\b",
    "atomics": r"\b(?:RED|ATOM)G?\b",
}


def compile_for_sm90(
    kernel: triton.JITFunction, constants: dict[str, object], num_warps: int, max_registers: int | None = None,
) -> triton.compiler.CompiledKernel:
    """Compile as the launcher would at Apriel's shapes: bf16 activations, fp32 parameters and state, and every
    integer argument divisible by 16 (Triton specialises on that at run time, and it decides vector widths);
    packed-row pointers as ``DOCUMENT_POINTERS`` (the scan's starts as uint8, ``triton_backend._starts_for_scan``;
    the conv's, ``conv_document_starts``)."""
    names = list(inspect.signature(kernel.fn).parameters)
    signature = {}
    for name in names:
        if name in constants:
            signature[name] = "constexpr"
        elif name in DOCUMENT_POINTERS:
            signature[name] = DOCUMENT_POINTERS[name]
        elif name.endswith("_ptr"):
            signature[name] = "*bf16" if name in BF16_POINTERS else "*fp32"
        else:
            signature[name] = "i32"
    divisible = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(names) if name not in constants}
    source = ASTSource(fn=kernel, signature=signature,
                       constexprs={(names.index(k),): v for k, v in constants.items()}, attrs=divisible)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": num_warps, "maxnreg": max_registers})


def sass_stats(compiled: triton.compiler.CompiledKernel) -> dict[str, int]:
    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage, sass = (
            subprocess.run([tools / "cuobjdump", flag, cubin.name], capture_output=True, text=True, check=True).stdout
            for flag in ("-res-usage", "-sass")
        )
    registers, stack = re.search(r"REG:(\d+) STACK:(\d+)", usage).groups()
    instructions = [line for line in sass.splitlines() if re.match(r"\s+/\*[0-9a-f]{4,}\*/\s+\S", line)]
    stats = {"registers": int(registers), "stack bytes": int(stack), "instructions": len(instructions)}
    stats.update({name: len(re.findall(pattern, sass)) for name, pattern in SASS_PATTERNS.items()})
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunk", type=int, default=SCAN_TILES.chunk)
    parser.add_argument("--n-states", type=int, default=16)
    parser.add_argument("--document-starts", action="store_true",
                        help="also compile each scan kernel and the conv forward for packed rows (HAS_DOCUMENT_STARTS) "
                             "and print both, then the launches a packed conv adds (its starts, its backward fix-up)")
    args = parser.parse_args()
    conv = dict(WIDTH=4, BLOCK_D=causal_conv1d_fwd.CONV_BLOCK_D, RUNS=causal_conv1d_fwd.CONV_RUNS, HAS_BIAS=True,
                HAS_HISTORY=False, SILU=True)
    common = dict(N=args.n_states, CHUNK=args.chunk, HAS_D=True, HAS_Z=True, HAS_DELTA_BIAS=True, DELTA_SOFTPLUS=True)
    kernels = {
        "scan forward": (selective_scan_fwd._selective_scan_fwd_kernel,
                    dict(common, HAS_INITIAL_STATE=False, STORE_CHECKPOINTS=True), SCAN_TILES.forward_num_warps),
        "scan backward": (selective_scan_bwd._selective_scan_bwd_kernel,
                     dict(common, HAS_D_LAST_STATE=False, WANTS_D_INITIAL_STATE=False, EVEN_LENGTH=True),
                     SCAN_TILES.backward_num_warps),
    }
    print(f"sm_90, N {args.n_states}, chunk {args.chunk}, triton {triton.__version__}")
    variants = [("", False)] + ([(", packed", True)] if args.document_starts else [])
    for name, (kernel, constants, num_warps) in kernels.items():
        for suffix, packed in variants:
            stats = sass_stats(compile_for_sm90(kernel, dict(constants, HAS_DOCUMENT_STARTS=packed), num_warps))
            print_stats(name + suffix, num_warps, stats)
    for suffix, packed in variants:  # the packed forward capped at its launcher's registers
        print_stats("conv forward" + suffix, causal_conv1d_fwd.CONV_NUM_WARPS, sass_stats(compile_for_sm90(
            causal_conv1d_fwd._causal_conv1d_fwd_kernel, dict(conv, HAS_DOCUMENT_STARTS=packed),
            causal_conv1d_fwd.CONV_NUM_WARPS, causal_conv1d_fwd.PACKED_FORWARD_MAX_REGISTERS if packed else None)))
    for suffix, packed in variants:  # packed: as the fix-up's programmatic dependent, as on Hopper
        print_stats("conv backward" + suffix, causal_conv1d_fwd.CONV_NUM_WARPS, sass_stats(compile_for_sm90(
            causal_conv1d_bwd._causal_conv1d_bwd_kernel, dict(conv, HAS_DOCUMENT_STARTS=packed, AFTER_FIXUP=packed),
            causal_conv1d_fwd.CONV_NUM_WARPS)))
    if args.document_starts:
        print_stats("conv starts", conv_document_starts.STARTS_NUM_WARPS, sass_stats(compile_for_sm90(
            conv_document_starts._conv_document_starts_kernel,
            dict(CLAMP=conv_document_starts.SINCE_CLAMP, BLOCK=conv_document_starts.STARTS_BLOCK,
                 TILE=conv_document_starts.TILE_STEPS),
            conv_document_starts.STARTS_NUM_WARPS)))
        print_stats("conv fix-up backward", conv_document_fixup.BACKWARD_NUM_WARPS, sass_stats(compile_for_sm90(
            conv_document_fixup._conv_document_fixup_bwd_kernel,
            dict(WIDTH=4, BLOCK_C=conv_document_fixup.BACKWARD_BLOCK_C, SLOTS=conv_document_fixup.BACKWARD_SLOTS,
                 HAS_BIAS=True, HAS_HISTORY=False, SILU=True, LAUNCH_DEPENDENTS=True),
            conv_document_fixup.BACKWARD_NUM_WARPS)))


def print_stats(name: str, num_warps: int, stats: dict[str, int]) -> None:
    """One kernel's figures on one line, its name right-aligned so that the lines read as columns."""
    print(f"{name:>40} ({num_warps} warp{'s' if num_warps > 1 else ''}): "
          + ", ".join(f"{key} {value}" for key, value in stats.items()))


if __name__ == "__main__":
    main()

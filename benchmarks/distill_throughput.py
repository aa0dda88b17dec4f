"""Tokens/s, MFU, time split and peak memory of the recipe's distillation step on one GPU.

What runs is the recipe's own step: ``recipes.training.distillation.DistillationTrainer`` trains a random-weight student
against a random-weight teacher with ``Trainer.train`` (its data loader, ``compute_loss`` with the chunked KD loss
of ``recipes.training.kd_loss``, backward, gradient clipping, fused AdamW, scheduler), on packed rows of random tokens
(by default one sequence per row, every position supervised, as ``packing: cross_document`` gives them;
``--document-tokens N``: documents of N tokens with ``position_ids`` restarting, as ``packing: true`` gives them).
Both models are built directly on the GPU in bf16; nothing is downloaded. CUDA events at the phase boundaries
split each step (teacher forward, student forward, KD loss, student backward, optimizer); they come from forward
hooks on both decoders and from overrides that only record an event around the trainer's own ``compute_loss`` /
``training_step``.

Default shape: Apriel-H1 15B's layer shape (hidden 5120, 32 heads, 8 KV heads, head_dim 128, MLP 14336, vocab
131072, Mamba d_state 16, d_xb 1024, dt_rank 16) at 25 of its 50 layers. Why 25: the teacher (8.2B params, 2 bytes
each) plus the student (8.6B params at 40/50 Mamba, 8 bytes each: bf16 weights, gradients and AdamW's two states,
as the recipe loads models in bf16) take 85 GB, leaving about 55 GB of an H200 for activations: about 25 GB at 4k
tokens unchecked, while 16k tokens need activation checkpointing (--checkpoint-layers). 28 layers would still fit at
4k with little margin; 25 keeps 30/50 and 40/50 exact (15 and 20 Mamba layers of 25). docs/distillation_throughput.md
has the arithmetic.

Parts (each one invocation, a few minutes on an H200):

    python -m benchmarks.distill_throughput --seq 4096                     # students 0/50, 30/50, 40/50 Mamba
    python -m benchmarks.distill_throughput --seq 16384 --checkpoint-layers 25
    python -m benchmarks.distill_throughput --part levers --seq 4096 --mamba 40   # gain of each speed lever
    python -m benchmarks.distill_throughput --part loss --seq 4096 16384   # KD loss alone: naive, ours, liger-kernel
    python -m benchmarks.distill_throughput --seq 16384 --checkpoint-layers 25 --document-tokens 2048 --mamba 0 40
    python -m benchmarks.distill_throughput --tiny --device cpu --steps 1 --warmup 0   # smoke run, prints no times

MFU = useful FLOPs of one step / step time / peak. Useful FLOPs = teacher forward + 3 x student forward (backward
= 2 x forward), matmul-class work only, recomputation by activation checkpointing not counted; see
:func:`forward_flops`. Two peaks are shown: the bf16 dense datasheet figure (989 TFLOP/s for H100/H200 SXM) and a
bf16 matmul measured in the same process (8192^3, the best a GEMM reaches on this GPU at this clock).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import statistics
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

if __package__ in (None, ""):  # run as a script: import the repository's packages
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transformers import AutoModelForCausalLM, MistralConfig, PrinterCallback, TrainerCallback, TrainingArguments

from modeling_apriel_h1 import AprielH1Config
from recipes.training.distillation import DistillationTrainer
from recipes.training.speed_levers import checkpoint_first_layers, compile_decoder_layers

GIB = 1024**3
DATASHEET_BF16_TFLOPS = 989.0  # NVIDIA H100/H200 SXM, dense bf16 tensor-core peak (no sparsity)
PHASES = ("teacher fwd", "student fwd", "KD loss", "student bwd", "optimizer")


@dataclass(frozen=True)
class Shape:
    """One layer shape shared by teacher and student (the student is converted from the teacher)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    d_state: int = 16
    d_conv: int = 4
    dt_rank: int = 16


APRIEL_15B_LAYERS_25 = Shape(
    hidden=5120, layers=25, heads=32, kv_heads=8, head_dim=128, intermediate=14336, vocab=131072
)
APRIEL_15B = replace(APRIEL_15B_LAYERS_25, layers=50)
TINY = Shape(hidden=64, layers=4, heads=4, kv_heads=2, head_dim=16, intermediate=96, vocab=256)


def mamba_layers(layers: int, fifties: int) -> list[int]:
    """Indices of ``fifties``/50 of ``layers`` layers made Mamba, spread evenly over the depth (at least one
    layer stays attention, as the model requires)."""
    count = min(round(layers * fifties / 50), layers - 1)
    return sorted({int((k + 0.5) * layers / count) for k in range(count)}) if count else []


# --- FLOPs --------------------------------------------------------------------------------------------------


def document_lengths(seq: int, document_tokens: int | None) -> list[int]:
    """Lengths of the documents of one packed row: ``document_tokens`` each (the last one shorter), or the whole
    row as one sequence when None."""
    if document_tokens is None or document_tokens >= seq:
        return [seq]
    return [document_tokens] * (seq // document_tokens) + ([seq % document_tokens] if seq % document_tokens else [])


def attention_layer_flops(shape: Shape, seq: int, document_tokens: int | None = None) -> dict[str, int]:
    """Forward FLOPs of one attention layer's mixer over one row of ``seq`` tokens.

    Projections: 2 FLOPs per weight per token (q: h x heads*d, k and v: h x kv_heads*d each, o: heads*d x h).
    Scores and values: QK^T and PV cost 2 * heads * d FLOPs each per (query, key) pair, over the causal pairs
    l (l + 1) / 2 of each document of length l, i.e. 2 * heads * d * l * (l + 1) per document (a row without
    ``position_ids`` resets is one document). Only these pairs are useful: an attention that masks the other
    pairs of a dense seq x seq matrix (SDPA with a packed mask) does more work than is counted here.
    """
    q_width, kv_width = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    projections = 2 * seq * (shape.hidden * q_width + 2 * shape.hidden * kv_width + q_width * shape.hidden)
    pairs = sum(length * (length + 1) for length in document_lengths(seq, document_tokens))
    return {"projections": projections, "attention": 2 * shape.heads * shape.head_dim * pairs}


def mamba_layer_flops(shape: Shape, seq: int) -> dict[str, int]:
    """Forward FLOPs of one Mamba mixer (``AprielH1Mamba``) over ``seq`` tokens.

    Projections (2 per weight per token): in_proj h x (2 d_inner + 2 d_xb) giving z, x, B, C; dt_in_proj h x
    dt_rank; dt_proj dt_rank x d_inner; out_proj d_inner x h. Depthwise conv: 2 * d_inner * d_conv per token.
    Selective scan: 9 * d_inner * d_state per token, plus d_inner for the D skip and d_inner for the silu(z) gate
    (mamba-ssm's count, ``flops_selective_scan_fn``, state-spaces/mamba issue 110). With d_inner = heads * d and
    d_xb = kv_heads * d as in the conversion. Repeating x and B to d_inner costs no FLOPs.
    """
    d_inner, d_xb = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    projections = 2 * seq * (
        shape.hidden * (2 * d_inner + 2 * d_xb) + shape.hidden * shape.dt_rank + shape.dt_rank * d_inner
        + d_inner * shape.hidden
    )
    mixer = seq * (2 * d_inner * shape.d_conv + 9 * d_inner * shape.d_state + 2 * d_inner)
    return {"projections": projections, "mamba mixer": mixer}


def forward_flops(
    shape: Shape, mamba: list[int], seq: int, batch: int, document_tokens: int | None = None
) -> dict[str, int]:
    """Forward FLOPs of one model over ``batch`` rows of ``seq`` tokens, by kind of work.

    Per layer: its mixer (attention or Mamba, above) + the SwiGLU MLP, 3 matmuls of h x intermediate
    (6 * h * intermediate per token). LM head: 2 * h * vocab per scored position: the recipe scores every
    position but the last of each document (position t predicts token t + 1 of the same document). Not counted:
    norms, rotary, activations, residual adds, softmax/divergence arithmetic, the embedding lookup.
    """
    totals = {"projections": 0, "attention": 0, "mamba mixer": 0, "mlp": 0, "lm head": 0}
    for index in range(shape.layers):
        if index in mamba:
            mixer = mamba_layer_flops(shape, seq)
        else:
            mixer = attention_layer_flops(shape, seq, document_tokens)
        for key, value in mixer.items():
            totals[key] += batch * value
        totals["mlp"] += batch * 6 * seq * shape.hidden * shape.intermediate
    scored = seq - len(document_lengths(seq, document_tokens))
    totals["lm head"] = 2 * batch * scored * shape.hidden * shape.vocab
    return totals


def step_flops(shape: Shape, mamba: list[int], seq: int, batch: int, document_tokens: int | None = None) -> int:
    """Useful FLOPs of one distillation step: teacher forward + student forward and backward (3 x forward)."""
    teacher = sum(forward_flops(shape, [], seq, batch, document_tokens).values())
    return teacher + 3 * sum(forward_flops(shape, mamba, seq, batch, document_tokens).values())


# --- models -------------------------------------------------------------------------------------------------


def common_fields(shape: Shape, seq: int) -> dict:
    return dict(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim, max_position_embeddings=max(seq, 4096), tie_word_embeddings=False,
    )


def build_models(shape: Shape, mamba: list[int], args: argparse.Namespace) -> tuple[nn.Module, nn.Module]:
    """Random teacher (Mistral, the format of Apriel-H1's teachers) and student, initialised on ``args.device``."""
    # MistralConfig defaults to a 4096-token sliding window; Apriel's teachers have none
    teacher_config = MistralConfig(
        **common_fields(shape, args.seq), sliding_window=None, attn_implementation=args.attn_implementation
    )
    layer_types = ["mamba" if index in mamba else "attention" for index in range(shape.layers)]
    student_config = AprielH1Config(
        **common_fields(shape, args.seq), layer_types=layer_types, mamba_d_state=shape.d_state,
        mamba_d_conv=shape.d_conv, mamba_dt_rank=shape.dt_rank, kernel_backend=args.kernel_backend,
        attn_implementation=args.attn_implementation,
    )
    with torch.device(args.device):
        teacher = AutoModelForCausalLM.from_config(teacher_config, dtype=args.dtype)
        student = AutoModelForCausalLM.from_config(student_config, dtype=args.dtype)
    return teacher, student.train()


class PackedRows(torch.utils.data.Dataset):
    """``count`` packed rows of random tokens (synthetic), no padding.

    Without ``document_tokens`` a row is one sequence with an all-ones attention mask (the recipe's ``packing:
    cross_document`` rows) and every position is supervised. With it, the row holds documents of that many
    tokens as the recipe's ``packing: true`` collator gives them: ``position_ids`` restarting at each document, no
    attention mask, and the first token of each document unlabelled (nothing before it in its document predicts it).
    """

    def __init__(self, count: int, seq: int, vocab: int, document_tokens: int | None = None):
        generator = torch.Generator().manual_seed(0)
        self.rows = torch.randint(0, vocab, (count, seq), generator=generator)
        self.document_tokens = document_tokens

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = self.rows[index]
        if self.document_tokens is None:
            return {"input_ids": row, "attention_mask": torch.ones_like(row), "labels": row.clone()}
        position_ids = torch.arange(len(row)) % self.document_tokens
        labels = row.masked_fill(position_ids == 0, -100)
        return {"input_ids": row, "position_ids": position_ids, "labels": labels}


# --- timing -------------------------------------------------------------------------------------------------


class StepEvents(TrainerCallback):
    """CUDA events at the phase boundaries of every training step (nothing recorded off CUDA)."""

    def __init__(self, cuda: bool):
        self.cuda, self.steps = cuda, []

    def mark(self, name: str) -> None:
        """Record an event; a name recurs once per micro-batch under gradient accumulation."""
        if self.cuda and self.steps:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.steps[-1].setdefault(name, []).append(event)

    def on_step_begin(self, args, state, control, **kwargs):
        self.steps.append({})
        self.mark("begin")

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.mark("optimizer end")

    def hook_decoder(self, model: nn.Module, name: str) -> None:
        decoder = model.get_decoder()
        decoder.register_forward_pre_hook(lambda *_: self.mark(f"{name} begin"))
        decoder.register_forward_hook(lambda *_: self.mark(f"{name} end"))

    def phase_ms(self, step: dict, following: dict) -> dict[str, float]:
        """Milliseconds of each phase of one optimizer step, summed over its micro-batches; ``total`` runs to the
        next step's begin (everything the loop does between two steps), ``other`` is what the phases leave of it."""

        def summed(start: str, end: str) -> float:
            return sum(a.elapsed_time(b) for a, b in zip(step[start], step[end], strict=True))

        phases = {
            "teacher fwd": summed("teacher begin", "teacher end"),
            "student fwd": summed("student begin", "student end"),
            "KD loss": summed("teacher end", "loss end"),
            "student bwd": summed("loss end", "backward end"),
            "optimizer": step["backward end"][-1].elapsed_time(step["optimizer end"][-1]),
            "total": step["begin"][0].elapsed_time(following["begin"][0]),
        }
        phases["other"] = phases["total"] - sum(phases[name] for name in PHASES)
        return phases


class TimedDistillationTrainer(DistillationTrainer):
    """The recipe's trainer, recording an event when its loss is computed and when its backward is done."""

    def __init__(self, *args, events: StepEvents, **kwargs):
        super().__init__(*args, callbacks=[events], **kwargs)
        self.remove_callback(PrinterCallback)  # its end-of-training line would print wall times of the warm-up too
        self.events = events

    def compute_loss(self, *args, **kwargs):
        loss = super().compute_loss(*args, **kwargs)
        self.events.mark("loss end")
        return loss

    def training_step(self, *args, **kwargs):
        loss = super().training_step(*args, **kwargs)
        self.events.mark("backward end")
        return loss


def measured_matmul_tflops(device: str, size: int = 8192, repeats: int = 50) -> float:
    """bf16 matmul throughput of this GPU now: ``size``^3 GEMMs timed with CUDA events after a warm-up."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * size**3 * repeats / (start.elapsed_time(end) / 1000) / 1e12


# --- one configuration ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Levers:
    """The speed options of one run (each a recipe option; see recipes/training/speed_levers.py)."""

    teacher_inference_mode: bool = False
    compile: bool = False
    checkpoint_layers: int | None = None  # None: no activation checkpointing
    kernel_backend: str = "auto"
    kd_loss_backend: str = "chunked"

    def label(self) -> str:
        parts = [name for name, on in (("inference-mode teacher", self.teacher_inference_mode),
                                       ("compiled layers", self.compile),
                                       ("liger KD loss", self.kd_loss_backend == "liger")) if on]
        if self.checkpoint_layers is not None:
            parts.append(f"checkpoint {self.checkpoint_layers} layers")
        if self.kernel_backend != "auto":
            parts.append(f"{self.kernel_backend} kernels")
        return ", ".join(parts) or "baseline"


def free_memory() -> None:
    gc.collect()
    torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_configuration(shape: Shape, fifties: int, levers: Levers, args: argparse.Namespace) -> dict:
    """Train warm-up + timed steps of one student; its times, throughput and memory (or the error)."""
    cuda = args.device.startswith("cuda")
    mamba = mamba_layers(shape.layers, fifties)
    row = {"student": f"{len(mamba)}/{shape.layers} Mamba" if mamba else "transformer", "levers": levers.label(),
           "fifties": fifties}
    free_memory()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer = None
    try:
        teacher, student = build_models(shape, mamba, replace_namespace(args, kernel_backend=levers.kernel_backend))
        row["params"] = (sum(p.numel() for p in teacher.parameters()), sum(p.numel() for p in student.parameters()))
        if levers.checkpoint_layers is not None:
            checkpoint_first_layers(student, levers.checkpoint_layers)
        if levers.compile:
            compile_decoder_layers(student)
            compile_decoder_layers(teacher)
        events = StepEvents(cuda)
        steps = args.warmup + args.steps + 1  # the last step only closes the previous one's total
        trainer = TimedDistillationTrainer(
            model=student,
            teacher_model=teacher,
            args=TrainingArguments(
                output_dir=str(args.output_dir), max_steps=steps, per_device_train_batch_size=args.batch,
                gradient_accumulation_steps=args.grad_accum,
                learning_rate=1e-5, lr_scheduler_type="linear", max_grad_norm=1.0, weight_decay=0.0,
                bf16=cuda and args.dtype == torch.bfloat16, use_cpu=not cuda, logging_steps=10**6,
                save_strategy="no", report_to=[], disable_tqdm=True, dataloader_num_workers=0,
                include_num_input_tokens_seen="non_padding",
            ),
            train_dataset=PackedRows(steps * args.batch * args.grad_accum, args.seq, shape.vocab, args.document_tokens),
            chunk_size=args.chunk_size,
            teacher_inference_mode=levers.teacher_inference_mode,
            kd_loss_backend=levers.kd_loss_backend,
            events=events,
        )
        del teacher, student
        events.hook_decoder(trainer.teacher_model, "teacher")
        events.hook_decoder(trainer.model, "student")
        trainer.train()
        row["tokens"] = trainer.state.num_input_tokens_seen
        row["flops"] = step_flops(shape, mamba, args.seq, args.batch * args.grad_accum, args.document_tokens)
        if cuda:
            torch.cuda.synchronize()
            timed = range(args.warmup, args.warmup + args.steps)
            split = [events.phase_ms(events.steps[i], events.steps[i + 1]) for i in timed]
            row["ms"] = {name: statistics.median(step[name] for step in split) for name in split[0]}
            row["peak GiB"] = torch.cuda.max_memory_allocated() / GIB
            row["static GiB"] = torch.cuda.memory_allocated() / GIB  # weights + optimizer states, between steps
    except torch.OutOfMemoryError:
        row["error"] = "out of memory"
    except Exception as error:  # a lever that fails on this machine is a row, not the end of the run
        row["error"] = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:120]}"
    finally:
        if trainer is not None:
            trainer.accelerator.free_memory()
        del trainer
        free_memory()
    return row


def replace_namespace(args: argparse.Namespace, **changes) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), **changes})


# --- output ---------------------------------------------------------------------------------------------------


def step_table(rows: list[dict], args: argparse.Namespace, peak_tflops: float | None, baseline: dict | None) -> str:
    """Markdown table; times and MFU only for CUDA runs (a CPU smoke run prints FLOPs and memory-free rows)."""
    header = ["student", "levers", "params T / S", "tokens/step", "TFLOP/step"]
    if args.device.startswith("cuda"):
        header += ["step ms", "tokens/s/GPU", "TFLOP/s", f"MFU vs {DATASHEET_BF16_TFLOPS:.0f}", "MFU vs matmul"]
        header += [f"{name} ms" for name in PHASES] + ["other ms", "peak GiB", "weights+opt GiB"]
        header.append("15B pair tokens/s/GPU at this MFU")
        if baseline is not None:
            header.append("speed vs baseline")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["student"], row["levers"]]
        if "error" in row:
            lines.append("| " + " | ".join(cells + [row["error"]] + [""] * (len(header) - 3)) + " |")
            continue
        tokens = args.batch * args.seq * args.grad_accum
        params = " / ".join(f"{count / 1e9:.3g}B" for count in row["params"])
        cells += [params, f"{tokens:,}", f"{row['flops'] / 1e12:.4g}"]
        if "ms" in row:
            ms = row["ms"]
            achieved = row["flops"] / (ms["total"] / 1000) / 1e12
            cells += [f"{ms['total']:.0f}", f"{tokens / (ms['total'] / 1000):,.0f}", f"{achieved:.0f}",
                      f"{achieved / DATASHEET_BF16_TFLOPS:.1%}",
                      f"{achieved / peak_tflops:.1%}" if peak_tflops else "-"]
            cells += [f"{ms[name]:.0f}" for name in PHASES] + [f"{ms['other']:.0f}"]
            cells += [f"{row['peak GiB']:.1f}", f"{row['static GiB']:.1f}"]
            cells.append(f"{projected_15b_tokens_per_s(achieved * 1e12, row['fifties'], args):,.0f}")
            if baseline is not None:
                cells.append(f"{baseline['ms']['total'] / ms['total']:.2f}x" if "ms" in baseline else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def projected_15b_tokens_per_s(flops_per_s: float, fifties: int, args: argparse.Namespace) -> float:
    """Tokens/s per GPU of the 15B teacher + 15B student (50 layers, the same Mamba share) at the same
    sequence length, if each GPU sustained the FLOP rate measured here: a projection for docs/, which assumes
    FSDP/ZeRO-3 hide their communication behind compute (an upper bound on what sharding gives)."""
    mamba = mamba_layers(APRIEL_15B.layers, fifties)
    return flops_per_s * args.seq / step_flops(APRIEL_15B, mamba, args.seq, 1, args.document_tokens)


FLOP_FORMULA = """\
FLOPs per step = F(teacher) + 3 F(student); F(model) over batch rows of s tokens, per row:
  attention layer: 2 s (h*H*d + 2 h*K*d + H*d*h)  +  sum over documents 2 H d l (l+1)   (causal QK^T and PV)
  Mamba layer:     2 s (h (2 H*d + 2 K*d) + h r + r H*d + H*d*h)  +  s H*d (2 w + 9 N + 2)   (conv, scan, D, gate)
  every layer:     6 s h I (SwiGLU);  LM head: 2 (s - documents) h V  (a row without resets: one document, l = s)
  h hidden, H heads, K KV heads, d head_dim, I MLP width, V vocab, N d_state, r dt_rank, w conv width.
  Activation-checkpoint recomputation is not counted (this is MFU, not hardware FLOPs utilisation)."""


# --- parts ----------------------------------------------------------------------------------------------------


def shape_from(args: argparse.Namespace) -> Shape:
    base = TINY if args.tiny else APRIEL_15B_LAYERS_25
    overrides = {key: value for key, value in (("layers", args.layers), ("hidden", args.hidden)) if value}
    return replace(base, **overrides)


def describe(shape: Shape, args: argparse.Namespace, peak_tflops: float | None) -> str:
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    packing = "one sequence per row, no position_ids resets"
    if args.document_tokens:
        packing = f"documents of {args.document_tokens} tokens, position_ids restarting"
    lines = [
        f"device {device}, torch {torch.__version__}, {str(args.dtype).removeprefix('torch.')}, "
        f"attention {args.attn_implementation}, KD chunk {args.chunk_size}",
        f"shape: {shape.layers} layers, hidden {shape.hidden}, {shape.heads} heads / {shape.kv_heads} KV, "
        f"head_dim {shape.head_dim}, MLP {shape.intermediate}, vocab {shape.vocab}; {args.grad_accum} x {args.batch} "
        f"rows x seq {args.seq} per optimizer step ({packing}); {args.warmup} warm-up + "
        f"{args.steps} timed steps (median)",
    ]
    if peak_tflops:
        lines.append(
            f"measured bf16 matmul peak (8192^3): {peak_tflops:.0f} TFLOP/s; datasheet {DATASHEET_BF16_TFLOPS:.0f}"
        )
    if not args.device.startswith("cuda"):
        lines.append("CPU smoke run: timings are not measured; the table shows the FLOP count and that steps ran")
    return "\n".join(lines)


def run_steps(args: argparse.Namespace, shape: Shape, peak_tflops: float | None) -> None:
    levers = Levers(args.teacher_inference_mode, args.compile, args.checkpoint_layers, args.kernel_backend)
    rows = [run_configuration(shape, fifties, levers, args) for fifties in args.mamba]
    print(step_table(rows, args, peak_tflops, baseline=None))


def lever_variants(args: argparse.Namespace) -> list[Levers]:
    """The baseline first, then the variants asked for with --variants (each lever alone, then all of them)."""
    base = Levers(checkpoint_layers=args.checkpoint_layers, kernel_backend=args.kernel_backend)
    every = {
        "inference-mode": replace(base, teacher_inference_mode=True),
        "compile": replace(base, compile=True),
        "all": replace(base, teacher_inference_mode=True, compile=True),
    }
    # "auto" already means Triton where mamba-ssm is missing; a Triton row is a comparison only beside mamba-ssm
    if args.kernel_backend == "auto" and args.mamba[0] and importlib.util.find_spec("mamba_ssm") is not None:
        every["triton"] = replace(base, kernel_backend="triton")
    if importlib.util.find_spec("liger_kernel") is not None:
        every["liger"] = replace(base, kd_loss_backend="liger")
    return [base] + [every[name] for name in args.variants if name in every]


def run_levers(args: argparse.Namespace, shape: Shape, peak_tflops: float | None) -> None:
    """Baseline, then each lever alone, then all together, for the first student of --mamba."""
    rows = [run_configuration(shape, args.mamba[0], variant, args) for variant in lever_variants(args)]
    print(step_table(rows, args, peak_tflops, baseline=rows[0]))


def run_loss(args: argparse.Namespace, shape: Shape) -> None:
    """The KD loss alone at the step's shapes: naive full logits, ours chunked, liger-kernel's fused linear JSD."""
    from benchmarks.kd_loss_memory import chunked_step, make_inputs, measure, naive_step, table

    for seq in args.seq_list:
        loss_args = argparse.Namespace(
            device=args.device, dtype=args.dtype, seq=args.batch * (seq - 1), vocab=shape.vocab, hidden=shape.hidden,
            prompt_fraction=0.0, loss="reverse_kl", warmup=args.warmup, steps=max(args.steps, 1),
        )
        inputs = make_inputs(loss_args)
        naive = measure(lambda: naive_step(inputs, loss_args), inputs, loss_args)
        rows = [("naive (full logits)", naive)]
        rows.append((f"ours, chunk {args.chunk_size}",
                     measure(lambda: chunked_step(inputs, loss_args, args.chunk_size), inputs, loss_args)))
        liger = liger_step_or_reason(inputs)
        rows.append(("liger-kernel fused linear JSD, beta=1 (reverse KL)",
                     measure(liger, inputs, loss_args) if callable(liger) else {"error": liger}))
        print(f"\nKD loss alone (reverse KL), {loss_args.seq} scored tokens x vocab {shape.vocab} "
              f"x hidden {shape.hidden}")
        print(table(rows, naive, times=args.device.startswith("cuda")))


def liger_step_or_reason(inputs: dict[str, torch.Tensor]):
    """A step of liger-kernel's fused linear JSD at beta=1, which is its reverse KL KL(student || teacher)
    averaged over the scored tokens (ours divides the sum by the same count); or why it cannot run."""
    try:
        from liger_kernel.transformers import LigerFusedLinearJSD
    except ImportError as error:
        return f"not importable ({error})"
    loss_fn = LigerFusedLinearJSD(jsd_beta=1.0, temperature=1.0)

    def step() -> float:
        hidden = inputs["student_hidden"].flatten(0, 1)
        loss = loss_fn(hidden, inputs["student_weight"], inputs["teacher_hidden"].flatten(0, 1),
                       inputs["teacher_weight"], inputs["labels"].flatten())
        loss.backward()
        return loss.item()

    return step


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["step", "levers", "loss"], default="step",
                        help="step: one row per student; levers: gain of each speed lever; loss: KD loss alone")
    parser.add_argument("--seq", type=int, nargs="+", default=[4096],
                        help="tokens per packed row (one value, except for --part loss)")
    parser.add_argument("--batch", type=int, default=1, help="rows per micro-batch (default 1)")
    parser.add_argument("--grad-accum", type=int, default=1,
                        help="micro-batches per optimizer step (the 15B config: 8); phases are summed over them")
    parser.add_argument("--document-tokens", type=int,
                        help="pack documents of this many tokens per row, position_ids restarting (packing: true); "
                             "default: one sequence per row (packing: cross_document)")
    parser.add_argument("--mamba", type=int, nargs="+", default=[0, 30, 40],
                        help="students: Mamba layers out of 50, spread evenly (0 = pure transformer anchor)")
    parser.add_argument("--variants", nargs="+", default=["inference-mode", "compile", "all", "triton", "liger"],
                        choices=["inference-mode", "compile", "all", "triton", "liger"],
                        help="--part levers: rows besides the baseline (triton only where mamba-ssm is installed, "
                             "liger (kd_loss_backend: liger) only where liger-kernel is)")
    parser.add_argument("--layers", type=int, help="override the number of layers of both models")
    parser.add_argument("--hidden", type=int, help="override the hidden size of both models")
    parser.add_argument("--steps", type=int, default=4, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (kernel compilation, autotuning)")
    parser.add_argument("--chunk-size", type=int, default=2048, help="KD loss chunk (the recipe's chunk_size)")
    parser.add_argument("--checkpoint-layers", type=int, help="activation-checkpoint the first N student layers")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models' decoder layers")
    parser.add_argument("--teacher-inference-mode", action="store_true", help="teacher under torch.inference_mode")
    parser.add_argument("--kernel-backend", default="auto", choices=["auto", "triton", "mamba_ssm", "reference"])
    parser.add_argument("--attn-implementation", default="sdpa",
                        help="transformers attention implementation (sdpa, flash_attention_2)")
    parser.add_argument("--tiny", action="store_true", help="a tiny shape, for a smoke run on CPU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output-dir", default="/tmp/distill_throughput", help="Trainer's output_dir (nothing saved)")
    args = parser.parse_args(argv)
    if args.part != "loss" and len(args.seq) != 1:
        parser.error("give one --seq per invocation for --part step/levers (each length is its own run)")
    args.seq_list, args.seq = args.seq, args.seq[0]
    args.dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_arguments(argv)
    shape = shape_from(args)
    peak = measured_matmul_tflops(args.device) if args.device.startswith("cuda") else None
    print(describe(shape, args, peak))
    if args.part == "loss":
        run_loss(args, shape)
        return
    print(FLOP_FORMULA + "\n")
    (run_levers if args.part == "levers" else run_steps)(args, shape, peak)


if __name__ == "__main__":
    main()

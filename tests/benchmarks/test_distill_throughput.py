"""benchmarks/distill_throughput.py on CPU: its FLOP count against a hand count, and that its step runs.

No timing is asserted or shown: on CPU the benchmark prints no times (GPU numbers come from the lead's runs).
"""

from __future__ import annotations

import pytest
from torch import nn

from benchmarks import distill_throughput as bench

TINY = bench.TINY  # h 64, 4 heads / 2 KV, head_dim 16, MLP 96, vocab 256, d_state 16, conv 4, dt_rank 16, 4 layers


def test_mamba_layers_are_spread_evenly_and_keep_an_attention_layer():
    assert bench.mamba_layers(25, 30) == [0, 2, 4, 5, 7, 9, 10, 12, 14, 15, 17, 19, 20, 22, 24]
    assert len(bench.mamba_layers(25, 40)) == 20
    assert bench.mamba_layers(50, 40) == sorted(set(bench.mamba_layers(50, 40)))
    assert bench.mamba_layers(4, 30) == [1, 3]
    assert bench.mamba_layers(4, 50) == [0, 2, 3]  # 4 of 4 would leave no attention layer
    assert bench.mamba_layers(25, 0) == []


def test_flop_count_equals_a_hand_count_of_the_tiny_configuration():
    seq = 32
    # attention layer, per token: q 64x64 + k 64x32 + v 64x32 + o 64x64 = 12288 weights -> 2 FLOPs each
    attention_projections = 2 * 12288 * seq
    attention_scores = 2 * 4 * 16 * 32 * 33  # QK^T and PV over the 32*33/2 causal pairs, 4 FLOPs per pair per dim
    # Mamba layer, per token: in_proj 64x(2*64+2*32) + dt_in 64x16 + dt_proj 16x64 + out 64x64 = 18432 weights
    mamba_projections = 2 * 18432 * seq
    mamba_mixer = seq * 64 * (2 * 4 + 9 * 16 + 2)  # conv (width 4), scan (9 N per channel), D skip, silu(z) gate
    mlp = 2 * 3 * 64 * 96 * seq
    head = 2 * 64 * 256 * (seq - 1)
    teacher = 4 * (attention_projections + attention_scores + mlp) + head
    student = 2 * (attention_projections + attention_scores + mlp) + 2 * (mamba_projections + mamba_mixer + mlp) + head
    assert teacher == 9_420_800 and student == 10_567_680
    assert sum(bench.forward_flops(TINY, [], seq, batch=1).values()) == teacher
    assert sum(bench.forward_flops(TINY, [1, 3], seq, batch=1).values()) == student
    assert bench.step_flops(TINY, [1, 3], seq, batch=3) == 3 * (teacher + 3 * student)


def test_matmul_flops_are_two_per_weight_of_every_linear_layer_of_the_built_models():
    """An independent check of the projection terms: the models' own nn.Linear weights, 2 FLOPs per token each."""
    seq = 16
    args = bench.parse_arguments(["--tiny", "--device", "cpu", "--seq", str(seq)])
    teacher, student = bench.build_models(TINY, [1, 3], args)
    for model, mamba in ((teacher, []), (student, [1, 3])):
        weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear) and m is not model.lm_head)
        flops = bench.forward_flops(TINY, mamba, seq, batch=1)
        assert flops["projections"] + flops["mlp"] == 2 * weights * seq
        assert flops["lm head"] == 2 * model.lm_head.weight.numel() * (seq - 1)


def test_cpu_smoke_run_trains_the_recipe_step_and_prints_no_times(capsys):
    args = bench.parse_arguments(["--tiny", "--device", "cpu", "--seq", "32", "--steps", "1", "--warmup", "0"])
    row = bench.run_configuration(TINY, 30, bench.Levers(teacher_inference_mode=True, checkpoint_layers=1), args)
    assert "error" not in row, row
    assert row["student"] == "2/4 Mamba" and row["tokens"] == 2 * 32  # warm-up + timed + the closing step
    assert row["flops"] == bench.step_flops(TINY, [1, 3], 32, 1) and "ms" not in row

    bench.main(["--tiny", "--device", "cpu", "--seq", "32", "--steps", "1", "--warmup", "0", "--mamba", "0"])
    printed = capsys.readouterr().out
    # 156,224 parameters each: embeddings and head 2 x 256 x 64, 4 layers of 30,848, final norm 64
    assert "| transformer | baseline | 0.000156B / 0.000156B | 32 |" in printed
    assert "timings are not measured" in printed
    assert " ms" not in printed.split("|---|")[0] and "train_runtime" not in printed


class _Event:
    """Stands in for a CUDA event: a timestamp in ms (synthetic, for the arithmetic of the time split)."""

    def __init__(self, ms: float):
        self.ms = ms

    def elapsed_time(self, later: "_Event") -> float:
        return later.ms - self.ms


def test_time_split_and_gpu_table_arithmetic_on_synthetic_events():
    marks = {"begin": 0, "student begin": 1, "student end": 5, "teacher begin": 5.5, "teacher end": 7.5,
             "loss end": 9, "backward end": 17, "optimizer end": 19}
    events = bench.StepEvents(cuda=False)
    split = events.phase_ms({k: [_Event(v)] for k, v in marks.items()}, {"begin": [_Event(20)]})
    assert split == {"teacher fwd": 2, "student fwd": 4, "KD loss": 1.5, "student bwd": 8, "optimizer": 2,
                     "total": 20, "other": 2.5}
    # two accumulated micro-batches: phases summed over both, the optimizer after the last backward
    second = {k: v + 17 for k, v in marks.items() if k not in ("begin", "optimizer end")}
    accumulated = {k: [_Event(marks[k])] + ([_Event(second[k])] if k in second else []) for k in marks}
    accumulated["optimizer end"] = [_Event(36)]
    assert events.phase_ms(accumulated, {"begin": [_Event(40)]}) == {
        "teacher fwd": 4, "student fwd": 8, "KD loss": 3, "student bwd": 16, "optimizer": 2, "total": 40, "other": 7}

    args = bench.parse_arguments(["--device", "cuda", "--seq", "4096"])
    flops = bench.step_flops(bench.APRIEL_15B_LAYERS_25, bench.mamba_layers(25, 40), 4096, 1)
    row = {"student": "20/25 Mamba", "levers": "baseline", "fifties": 40, "flops": flops, "params": (8.16e9, 8.58e9),
           "ms": {**split, "total": 1000 * flops / 989e12}, "peak GiB": 100.0, "static GiB": 80.0}
    cells = [cell.strip() for cell in bench.step_table([row], args, 800.0, None).splitlines()[2].split("|")]
    assert cells[8:11] == ["989", "100.0%", f"{989 / 800:.1%}"]  # achieved TFLOP/s, MFU vs 989, MFU vs matmul
    assert float(cells[7].replace(",", "")) == pytest.approx(4096 / (flops / 989e12), rel=1e-3)  # tokens/s/GPU
    per_token_15b = bench.step_flops(bench.APRIEL_15B, bench.mamba_layers(50, 40), 4096, 1) / 4096
    assert float(cells[-2].replace(",", "")) == pytest.approx(989e12 / per_token_15b, rel=1e-3)

    accumulated = bench.parse_arguments(["--device", "cuda", "--seq", "4096", "--grad-accum", "8"])
    row = {**row, "flops": 8 * flops, "ms": {**split, "total": 8000 * flops / 989e12}}
    cells = [cell.strip() for cell in bench.step_table([row], accumulated, 800.0, None).splitlines()[2].split("|")]
    assert cells[4] == f"{8 * 4096:,}" and cells[9] == "100.0%"


def test_liger_kernel_reverse_kl_is_ours():
    """The benchmark's liger row computes the same loss: LigerFusedLinearJSD at beta=1 against our chunked reverse
    KL, value and gradients. Needs liger-kernel and triton: on a GPU, or on CPU with TRITON_INTERPRET=1 (checked
    so with liger-kernel 0.8.5 and triton 3.9: equal to 1e-7)."""
    pytest.importorskip("liger_kernel")
    import os

    import torch

    from recipes.training.kd_loss import chunked_distillation_sums

    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("liger-kernel's Triton kernels need a GPU or TRITON_INTERPRET=1")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = torch.Generator(device=device).manual_seed(0)
    tokens, hidden, vocab = 24, 16, 64
    randn = lambda *shape, scale=1.0: torch.randn(*shape, generator=generator, device=device) * scale  # noqa: E731
    student_hidden = randn(1, tokens, hidden).requires_grad_()
    student_weight = randn(vocab, hidden, scale=0.5).requires_grad_()
    labels = torch.randint(0, vocab, (1, tokens), generator=generator, device=device)
    labels[:, :5] = -100
    inputs = dict(student_hidden=student_hidden, student_weight=student_weight, teacher_hidden=randn(1, tokens, hidden),
                  teacher_weight=randn(vocab, hidden, scale=0.7), labels=labels)
    liger_loss = bench.liger_step_or_reason(inputs)()
    liger_grads = student_hidden.grad.clone(), student_weight.grad.clone()
    student_hidden.grad = student_weight.grad = None
    sums = chunked_distillation_sums(student_hidden, (student_weight, None), inputs["teacher_hidden"],
                                     (inputs["teacher_weight"], None), labels, "reverse_kl", chunk_size=7)
    (sums.divergence / sums.num_tokens).backward()
    assert liger_loss == pytest.approx((sums.divergence / sums.num_tokens).item(), rel=1e-5)
    torch.testing.assert_close(student_hidden.grad, liger_grads[0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(student_weight.grad, liger_grads[1], rtol=1e-4, atol=1e-6)


def test_documents_count_attention_and_scored_positions_per_document():
    seq = 32
    assert bench.document_lengths(32, 16) == [16, 16] and bench.document_lengths(32, 12) == [12, 12, 8]
    assert bench.document_lengths(32, None) == [32] == bench.document_lengths(32, 64)
    whole, split = bench.forward_flops(TINY, [1, 3], seq, 1), bench.forward_flops(TINY, [1, 3], seq, 1, 16)
    assert split["attention"] == 2 * (2 * 4 * 16 * 2 * 16 * 17)  # 2 attention layers, 2 documents of 16 each
    assert whole["attention"] == 2 * (2 * 4 * 16 * 32 * 33)
    assert split["lm head"] == 2 * 64 * 256 * 30 and whole["lm head"] == 2 * 64 * 256 * 31
    assert {k: v for k, v in split.items() if k not in ("attention", "lm head")} == {
        k: v for k, v in whole.items() if k not in ("attention", "lm head")}

    rows = bench.PackedRows(1, seq, 256, document_tokens=12)[0]
    assert rows["position_ids"].tolist() == list(range(12)) * 2 + list(range(8)) and "attention_mask" not in rows
    assert (rows["labels"] == -100).nonzero().flatten().tolist() == [0, 12, 24]
    # the trainer scores labels[:, 1:]: as many positions as the FLOP count's LM head
    assert int((rows["labels"][1:] != -100).sum()) == seq - 3


def test_cpu_smoke_run_with_documents_trains():
    args = bench.parse_arguments(["--tiny", "--device", "cpu", "--seq", "32", "--steps", "1", "--warmup", "0",
                                  "--document-tokens", "12"])
    row = bench.run_configuration(TINY, 40, bench.Levers(), args)
    assert "error" not in row, row
    assert row["flops"] == bench.step_flops(TINY, bench.mamba_layers(4, 40), 32, 1, 12)

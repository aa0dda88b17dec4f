"""The step-speed options change how fast the distillation step runs, never what it computes."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
from transformers import MistralForCausalLM, TrainingArguments

from modeling_apriel_h1 import AprielH1ForCausalLM
from recipes.training.distillation import DistillationTrainer
from recipes.training.speed_levers import checkpoint_first_layers, compile_decoder_layers

from ..modeling.tiny import tiny_config, tiny_mistral_config

MIXED = ["attention", "mamba", "mamba", "attention"]


def models(seed: int = 0) -> tuple[MistralForCausalLM, AprielH1ForCausalLM]:
    """A tiny random teacher and a tiny random hybrid student of the same vocabulary (synthetic, not converted)."""
    torch.manual_seed(seed)
    return MistralForCausalLM(tiny_mistral_config()), AprielH1ForCausalLM(tiny_config(MIXED)).train()


def batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(3, 97, (2, 12), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, :4] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def loss_and_gradients(student, teacher, tmp_path, **trainer_options) -> tuple[float, dict[str, torch.Tensor]]:
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, chunk_size=5, **trainer_options,
        args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], disable_tqdm=True),
    )
    student.zero_grad()
    loss = trainer.compute_loss(student, batch())
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in student.named_parameters() if p.grad is not None}


def test_teacher_under_inference_mode_gives_the_same_loss_and_gradients(tmp_path):
    teacher, student = models()
    loss, grads = loss_and_gradients(student, teacher, tmp_path)
    fast_loss, fast_grads = loss_and_gradients(student, teacher, tmp_path, teacher_inference_mode=True)
    assert fast_loss == loss and loss > 0
    assert fast_grads.keys() == grads.keys() and any(".mixer." in name for name in grads)
    for name in grads:
        assert torch.equal(fast_grads[name], grads[name]), name


def test_checkpointing_the_first_layers_only_flags_those_and_keeps_gradients(tmp_path):
    teacher, student = models()
    _, grads = loss_and_gradients(student, teacher, tmp_path)
    assert checkpoint_first_layers(student, 2) == [0, 1]
    assert [layer.gradient_checkpointing for layer in student.model.layers] == [True, True, False, False]
    _, checkpointed_grads = loss_and_gradients(student, teacher, tmp_path)
    for name in grads:
        torch.testing.assert_close(checkpointed_grads[name], grads[name], rtol=1e-5, atol=1e-7)
    assert checkpoint_first_layers(student, None) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="has 4 decoder layers"):
        checkpoint_first_layers(student, 5)


def test_compiled_layers_give_the_same_loss_and_gradients(tmp_path):
    """Traced with the aot_eager backend (dynamo + AOT autograd, no C++ toolchain needed) so CPU runs it quickly;
    on a GPU the recipe uses inductor."""
    teacher, student = models()
    loss, grads = loss_and_gradients(student, teacher, tmp_path)
    # attention layers whole; Mamba layers as their two norms and MLP, the mixer left to its own kernels
    assert compile_decoder_layers(student, backend="aot_eager") == 2 + 2 * 3
    assert compile_decoder_layers(teacher, backend="aot_eager") == 4
    compiled_loss, compiled_grads = loss_and_gradients(student, teacher, tmp_path)
    assert compiled_loss == pytest.approx(loss, rel=1e-5)
    for name in grads:
        torch.testing.assert_close(compiled_grads[name], grads[name], rtol=1e-4, atol=1e-6)


def test_the_liger_backend_refuses_what_it_cannot_compute(tmp_path):
    teacher, student = models()
    with pytest.raises(ValueError, match="reverse_kl and forward_kl, not 'jsd'"):
        loss_and_gradients(student, teacher, tmp_path, kd_loss_backend="liger", loss_kind="jsd")
    with pytest.raises(ValueError, match="Unknown kd_loss_backend='fused'"):
        loss_and_gradients(student, teacher, tmp_path, kd_loss_backend="fused")
    if importlib.util.find_spec("liger_kernel") is None:
        with pytest.raises(ValueError, match=r"needs liger-kernel: pip install 'apriel-h1\[liger\]'"):
            loss_and_gradients(student, teacher, tmp_path, kd_loss_backend="liger")


@pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is None, reason="liger-kernel is not installed")
@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                    reason="the trainer here runs on the CPU: liger's Triton kernels need TRITON_INTERPRET=1")
@pytest.mark.parametrize("kind", ["reverse_kl", "forward_kl"])
def test_the_liger_backend_gives_the_chunked_loss_and_gradients(tmp_path, kind):
    """Checked with liger-kernel 0.8.5 under Triton's interpreter; the logs then carry kd_loss but no student_ce."""
    teacher, student = models()
    loss, grads = loss_and_gradients(student, teacher, tmp_path, loss_kind=kind)
    liger_loss, liger_grads = loss_and_gradients(student, teacher, tmp_path, loss_kind=kind, kd_loss_backend="liger")
    assert liger_loss == pytest.approx(loss, rel=1e-5) and loss > 0
    assert liger_grads.keys() == grads.keys()
    for name in grads:
        torch.testing.assert_close(liger_grads[name], grads[name], rtol=1e-4, atol=1e-6)

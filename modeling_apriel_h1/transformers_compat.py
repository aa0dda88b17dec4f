"""What differs between the transformers versions this project supports (5.17 to 5.25), answered in one place.

transformers 5.24 renamed the cache from ``past_key_values`` to ``cache`` (forward argument and output field),
gave ``prepare_inputs_for_generation`` a ``next_sequence_length`` argument, and renamed gradient checkpointing to
activation checkpointing (``TrainingArguments`` field and the model method), warning when the old names are used.
Each question is asked of the installed version's own signatures, not of its version number. The model uses the
first three and ships this file as remote code; the training switches import nothing until called.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any

from transformers.generation import GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPast

# The installed version's name of the cache in model outputs and in our forward's arguments
CACHE_FIELD = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"
# Whether generate() sizes each step's input by ``next_sequence_length`` (which must then be reset with the cache)
GENERATE_TAKES_NEXT_SEQUENCE_LENGTH = (
    "next_sequence_length" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
)


def one_cache(cache: Any, past_key_values: Any) -> Any:
    """The cache passed under either name; a ValueError if both are given."""
    if cache is not None and past_key_values is not None:
        raise ValueError("Pass the cache once: as `cache` or as `past_key_values` (its name before transformers 5.24).")
    return cache if cache is not None else past_key_values


def cache_argument(forward: Callable) -> str:
    """The name under which ``forward`` (any model's, a teacher's too) takes its cache."""
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def cache_of(output: Mapping[str, Any]) -> Any:
    """The cache a model's forward returned, under whichever name the model's output class has."""
    return output["cache"] if "cache" in output else output["past_key_values"]


def activation_checkpointing_argument() -> str:
    """The ``TrainingArguments`` field (TRL's configs inherit it) that switches activation checkpointing."""
    from transformers import TrainingArguments

    names = {field.name for field in fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def enable_activation_checkpointing(model: Any, checkpointing_kwargs: dict[str, Any]) -> None:
    """Turn on transformers' activation checkpointing of every ``GradientCheckpointingLayer`` of ``model``."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable(checkpointing_kwargs)

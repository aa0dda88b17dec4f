"""Which student parameters a distillation stage trains.

Apriel-H1 stages either train the whole hybrid or only what conversion created: the Mamba mixers
(parameter names containing ``.mixer.``), optionally with the MLPs (``.mlp.``) so the blocks around a new
mixer can adapt. Everything else is frozen (``requires_grad=False``): the optimizer never sees it and no
gradient is computed for it.
"""

from __future__ import annotations

from torch import nn

TRAINABLE_PATTERNS: dict[str, tuple[str, ...] | None] = {
    "all": None,
    "mamba": (".mixer.",),
    "mamba_mlp": (".mixer.", ".mlp."),
}


def select_trainable_parameters(model: nn.Module, trainable: str) -> list[str]:
    """Freeze all parameters but those ``trainable`` names; returns the names left trainable."""
    if trainable not in TRAINABLE_PATTERNS:
        raise ValueError(f"Unknown trainable={trainable!r}; choose one of {sorted(TRAINABLE_PATTERNS)}.")
    patterns = TRAINABLE_PATTERNS[trainable]
    trained = []
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(patterns is None or any(pattern in name for pattern in patterns))
        if parameter.requires_grad:
            trained.append(name)
    if not trained:
        raise ValueError(
            f"trainable={trainable!r} selects no parameter of the student: none of its parameter names contains "
            f"{' or '.join(patterns)}. Is the student a converted hybrid with Mamba layers? Use trainable='all' "
            "otherwise."
        )
    return trained

"""Leave-one-out layer importance (Apriel-H1 paper, section 3.1, eq. 4).

For each layer l the model with block l replaced by the identity, M^(-l), is scored against the unmodified
model M: ``I_l = P(M) - P(M^(-l))``. A high score means the layer matters; the least important layers are
the first to get a Mamba mixer.

Cost: for every batch, one forward of the unmodified model and one per scored layer (the skipped block is
swapped out for an identity module, so it costs nothing), and no gradients. Batches are the outer loop, so
only one batch's reference hidden states are alive at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from modeling_apriel_h1.layer_types import decoder_layers
from recipes.importance.layers import check_layer_indices, skip_layer
from recipes.importance.scoring import RowSums, ScoringData, head_weights, performance, row_sums
from recipes.training.kd_loss import final_hidden_states


@dataclass
class LooResult:
    metric: str
    baseline: float  # P of the unmodified model
    performance: dict[int, float]  # P of the model without layer l
    importance: dict[int, float]  # baseline - performance[l]


def _collect(totals: dict, key, sums: RowSums, rows: torch.Tensor) -> None:
    """Scatter one batch's per-row sums into the variant's global per-row totals."""
    target = totals[key]
    for name, value in sums._asdict().items():
        target[name][rows] = value.cpu()


@torch.no_grad()
def leave_one_out(
    model: nn.Module,
    data: ScoringData,
    layers: list[int] | None = None,
    chunk_size: int = 1024,
    progress: bool = True,
) -> LooResult:
    """LOO importance of ``layers`` (default: every layer) of ``model`` on ``data``."""
    num_layers = len(decoder_layers(model))
    layers = check_layer_indices(layers, num_layers)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    variants = [None, *layers]  # None: the unmodified model
    totals = {
        variant: {name: torch.zeros(data.num_rows) for name in RowSums._fields} for variant in variants
    }
    bar = tqdm(total=len(data.batches) * len(variants), desc="LOO", unit="forward", disable=not progress)
    try:
        for batch in data.batches:
            batch = {key: value.to(device) for key, value in batch.items()}
            head = head_weights(model)
            reference = final_hidden_states(model, batch)
            _collect(totals, None, row_sums(reference, head, batch["labels"], chunk_size=chunk_size), batch["row"])
            bar.update()
            for layer in layers:
                with skip_layer(model, layer):
                    hidden = final_hidden_states(model, batch)
                anchor = (reference, head) if data.needs_reference else None
                _collect(totals, layer, row_sums(hidden, head, batch["labels"], anchor, chunk_size), batch["row"])
                bar.update()
    finally:
        bar.close()
        model.train(was_training)
    scores = {variant: performance(data, RowSums(**totals[variant])) for variant in variants}
    baseline = scores.pop(None)
    return LooResult(data.metric, baseline, scores, {layer: baseline - value for layer, value in scores.items()})


def describe_scores(result: LooResult, source: str) -> str:
    """What the scores of a LOO run mean, for its output: what the unmodified model scores and what a layer's
    importance measures, with the most and least important layers."""
    ranked = sorted(result.importance, key=result.importance.get)
    extremes = (
        f"most important: layer {ranked[-1]} ({result.importance[ranked[-1]]:.4g}), "
        f"least: layer {ranked[0]} ({result.importance[ranked[0]]:.4g})"
    ) if ranked else "no layer scored"
    if result.metric == "kl":
        meaning = (
            f"importance of a layer = KL(model without it || unmodified model) in nats per token on {source}, "
            "the reverse KL that distillation minimises (the unmodified model's KL to itself is 0)"
        )
    elif result.metric == "loss":
        meaning = (
            f"unmodified model: loss {-result.baseline:.4g} nats per token on {source}; importance of a layer = "
            "how much the loss rises without it"
        )
    else:
        meaning = (
            f"unmodified model: accuracy {result.baseline:.4g} on {source}; importance of a layer = how much the "
            "accuracy drops without it"
        )
    return f"{meaning}; {extremes}"

"""The two figures of the paper's section 3.1, drawn from a ranking payload (see ``ranking.py``).

* LOO (paper Fig. 1): one bar per layer, its importance.
* MMR (paper Fig. 2): each candidate layer's rank by KD loss right after MIL initialisation (left column) and
  after the short distillation (right column), joined by a line; lines cross where the ranking changes.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

_LOO_AXIS = {
    "accuracy": "accuracy drop without the layer",
    "loss": "loss increase without the layer (nats/token)",
    "kl": "KL(without layer || full) (nats/token)",
}


def _short(name: str, width: int = 60) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3) :]


def plot_loo(payload: dict, path: str | Path, highlight: int = 0) -> Path:
    """Bar per layer; the ``highlight`` least important layers (the next to replace) drawn in another colour."""
    scores = {int(layer): value for layer, value in payload["scores"].items()}
    layers = sorted(scores)
    chosen = set(payload["ranking"][:highlight])
    figure, axes = plt.subplots(figsize=(max(6.0, 0.2 * len(layers) + 2.5), 4.5))
    colours = ["tab:orange" if layer in chosen else "tab:blue" for layer in layers]
    axes.bar(range(len(layers)), [scores[layer] for layer in layers], color=colours, edgecolor="black", linewidth=0.4)
    axes.axhline(0.0, color="black", linewidth=0.8)
    axes.set_xticks(range(len(layers)), [str(layer) for layer in layers], rotation=90 if len(layers) > 32 else 0)
    axes.set_xlim(-0.6, len(layers) - 0.4)
    axes.set_xlabel("layer")
    axes.set_ylabel(f"importance (↑): {_LOO_AXIS.get(payload['metric'], payload['metric'])}")
    title = f"Leave-one-out layer importance, metric: {payload['metric']}\n{_short(payload['model'])}"
    if chosen:
        title += f"  (orange: {len(chosen)} least important)"
    axes.set_title(title, fontsize=10)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return _save(figure, path)


def plot_mmr(payload: dict, path: str | Path) -> Path:
    """Two columns of ranks (step 0, after N steps), highest loss (most important) at the top."""
    losses = {int(layer): value for layer, value in payload["losses"].items()}
    layers = sorted(losses)
    initial = {layer: losses[layer]["initial_loss"] for layer in layers}
    final = {layer: losses[layer]["final_loss"] for layer in layers}
    # position 0 at the bottom = lowest loss = least important (replaced first)
    initial_position = {layer: rank for rank, layer in enumerate(sorted(layers, key=lambda l: (initial[l], l)))}
    final_position = {layer: rank for rank, layer in enumerate(sorted(layers, key=lambda l: (final[l], l)))}
    steps = payload.get("steps", "N")

    figure, axes = plt.subplots(figsize=(6.4, max(4.5, 0.32 * len(layers) + 1.8)))
    colours = plt.get_cmap("viridis")
    for layer in layers:
        colour = colours(final_position[layer] / max(1, len(layers) - 1))
        y0, y1 = initial_position[layer], final_position[layer]
        axes.plot([0, 1], [y0, y1], "-o", color=colour, linewidth=1.6, markersize=5)
        axes.text(-0.04, y0, f"layer {layer}  {initial[layer]:.4g}", ha="right", va="center", fontsize=8)
        axes.text(1.04, y1, f"{final[layer]:.4g}  layer {layer}", ha="left", va="center", fontsize=8)
    axes.set_xlim(-0.75, 1.75)
    axes.set_ylim(-0.7, len(layers) - 0.3)
    axes.set_xticks([0, 1], ["step 0\n(MIL init)", f"after {steps} steps"])
    axes.set_yticks([])
    axes.set_ylabel("rank by KD loss (↑ more important)")
    axes.set_xlabel("points: held-out KD loss; bottom row = lowest loss = replaced first", fontsize=8)
    for side in ("top", "right", "left"):
        axes.spines[side].set_visible(False)
    axes.set_title(
        f"MIL-Mamba-Replacement: KD loss ({payload['metric']}) per candidate layer\n{_short(payload['model'])}",
        fontsize=10,
    )
    figure.tight_layout()
    return _save(figure, path)


def plot_ranking(payload: dict, path: str | Path, highlight: int = 0) -> Path:
    return plot_mmr(payload, path) if payload["method"] == "mmr" else plot_loo(payload, path, highlight)


def _save(figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=130)
    plt.close(figure)
    return path

"""The list of student tensors, each with its name, shape and a recipe that computes it from the teacher.

Both conversion paths run the same plan: in memory (the teacher's ``state_dict``) and streaming (a sharded
safetensors checkpoint read tensor by tensor). Knowing every shape before computing anything lets the
streaming writer lay out a shard's header first and then write tensors one at a time.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from modeling_apriel_h1 import AprielH1Config, AprielH1ForCausalLM, AprielHConfig, AprielHForCausalLM

from .mil import ATTENTION_NAMES, FOLD_QK_NORMS, mil_mixer_tensors

_ATTENTION_TENSOR = re.compile(r"^model\.layers\.(\d+)\.self_attn\.(\w+)\.(weight|bias)$")
# Fused projections (Phi-3) and the separate ones our layout holds, stacked in this order along the rows
_FUSED_PROJECTIONS = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
}
# Buffers some older checkpoints carry; the model recomputes them.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    compute: Callable[[], torch.Tensor]


def causal_lm_class(config: AprielH1Config) -> type[AprielH1ForCausalLM]:
    """The model class of ``config``: ``AprielHForCausalLM`` for the released layout, else ``AprielH1ForCausalLM``
    (the same model; transformers pairs each config class with its own model class)."""
    return AprielHForCausalLM if isinstance(config, AprielHConfig) else AprielH1ForCausalLM


def expected_student_shapes(config: AprielH1Config) -> dict[str, tuple[int, ...]]:
    """Every parameter of the student with its shape, from a model built on the meta device (no memory)."""
    with torch.device("meta"):
        model = causal_lm_class(config)(config)
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


class _LayerMixer:
    """Computes a replaced layer's mixer tensors once, then hands them out one by one (and forgets them)."""

    def __init__(self, make: Callable[[], dict[str, torch.Tensor]]):
        self._make = make
        self._tensors: dict[str, torch.Tensor] | None = None

    def take(self, name: str) -> torch.Tensor:
        if self._tensors is None:
            self._tensors = self._make()
        tensor = self._tensors.pop(name)
        if not self._tensors:
            self._make = None  # the layer is done; drop the teacher tensors the closure holds
        return tensor


def plan_student_tensors(
    config: AprielH1Config,
    teacher_names: list[str],
    read: Callable[[str], torch.Tensor],
    new_mamba_layers: list[int],
    seed: int,
    dtype: torch.dtype,
    fold_qk_norms: bool = FOLD_QK_NORMS,
) -> list[tuple[str, PlannedTensor]]:
    """For each student tensor, in teacher order: (the teacher tensor it comes from or is placed beside, plan).

    Tensors of untouched layers are copied (cast to ``dtype``; a fused projection split into ours, see
    ``unfused_tensors``); a replaced layer's attention tensors become its
    MIL mixer, placed where the teacher's first attention tensor of that layer was. The result is checked
    against the student's parameters, so a teacher tensor we cannot place is an error, never silently dropped.
    """
    expected = expected_student_shapes(config)
    replaced = set(new_mamba_layers)
    mixers: dict[int, _LayerMixer] = {}
    plan: list[tuple[str, PlannedTensor]] = []
    sources, read = unfused_tensors(config, teacher_names, read)
    teacher_names = list(sources)
    for name in teacher_names:
        if name.endswith(_IGNORED_SUFFIXES):
            continue
        match = _ATTENTION_TENSOR.match(name)
        if match and int(match.group(1)) in replaced:
            layer = int(match.group(1))
            if layer not in mixers:
                mixers[layer] = _plan_mixer(config, layer, teacher_names, read, seed, dtype, fold_qk_norms)
                plan += [
                    (sources[name], PlannedTensor(mixer_name, expected[mixer_name], dtype, _taker(mixers[layer], mixer_name)))
                    for mixer_name in expected
                    if mixer_name.startswith(f"model.layers.{layer}.mixer.")
                ]
            continue
        if name not in expected:
            raise ValueError(
                f"teacher tensor {name!r} has no place in the AprielH1 student; the teacher uses a feature the "
                "conversion does not support"
            )
        plan.append((sources[name], PlannedTensor(name, expected[name], dtype, _copier(read, name, dtype))))
    planned = {entry.name for _, entry in plan}
    missing = sorted(set(expected) - planned - ({"lm_head.weight"} if config.tie_word_embeddings else set()))
    if missing:
        raise ValueError(f"the teacher checkpoint lacks tensors the student needs: {missing[:8]}")
    return plan


def unfused_tensors(
    config: AprielH1Config, teacher_names: list[str], read: Callable[[str], torch.Tensor]
) -> tuple[dict[str, str], Callable[[str], torch.Tensor]]:
    """The teacher's tensors as our layout names them: ({our name: the teacher tensor it is read from}, in teacher
    order; a reader of our names). A fused projection (Phi-3's ``qkv_proj`` and ``gate_up_proj``) becomes the
    separate ones it stacks, row slices of it sized by ``config``; every other tensor keeps its name.

    The reader keeps the last fused tensor it read, so the slices of one fused tensor read the file once."""
    sizes = {
        "self_attn.q_proj": config.num_attention_heads * config.head_dim,
        "self_attn.k_proj": config.num_key_value_heads * config.head_dim,
        "self_attn.v_proj": config.num_key_value_heads * config.head_dim,
        "mlp.gate_proj": config.intermediate_size,
        "mlp.up_proj": config.intermediate_size,
    }
    sources: dict[str, str] = {}
    slices: dict[str, tuple[str, int, int, int]] = {}  # our name -> (fused name, first row, rows, fused rows)
    for name in teacher_names:
        prefix, _, module_and_kind = name.rpartition(".layers.")
        layer, _, rest = module_and_kind.partition(".")
        module, _, kind = rest.rpartition(".")
        if not prefix or module not in _FUSED_PROJECTIONS:
            sources[name] = name
            continue
        parts = _FUSED_PROJECTIONS[module]
        total, start = sum(sizes[part] for part in parts), 0
        for part in parts:
            ours = f"{prefix}.layers.{layer}.{part}.{kind}"
            sources[ours] = name
            slices[ours] = (name, start, sizes[part], total)
            start += sizes[part]
    last: dict[str, torch.Tensor] = {}

    def read_ours(name: str) -> torch.Tensor:
        if name not in slices:
            return read(name)
        fused, start, rows, total = slices[name]
        if fused not in last:
            last.clear()
            last[fused] = read(fused)
        tensor = last[fused]
        if tensor.shape[0] != total:
            raise ValueError(
                f"teacher tensor {fused!r} has {tensor.shape[0]} rows; the config's heads, head_dim and "
                f"intermediate_size give {total} for the projections it stacks"
            )
        return tensor[start : start + rows]

    return sources, read_ours


def _copier(read: Callable[[str], torch.Tensor], name: str, dtype: torch.dtype) -> Callable[[], torch.Tensor]:
    return lambda: read(name).to(dtype)


def _taker(mixer: _LayerMixer, full_name: str) -> Callable[[], torch.Tensor]:
    relative = full_name.split(".mixer.", 1)[1]
    return lambda: mixer.take(relative)


def _plan_mixer(
    config: AprielH1Config,
    layer: int,
    teacher_names: list[str],
    read: Callable[[str], torch.Tensor],
    seed: int,
    dtype: torch.dtype,
    fold_qk_norms: bool,
) -> _LayerMixer:
    prefix = f"model.layers.{layer}.self_attn."
    sources = [name for name in teacher_names if name.startswith(prefix)]
    missing = [f"{prefix}{proj}.weight" for proj in ATTENTION_NAMES if f"{prefix}{proj}.weight" not in sources]
    if missing:
        raise ValueError(f"layer {layer} is to be replaced but the teacher lacks {missing}")

    def make() -> dict[str, torch.Tensor]:
        attention = {name.removeprefix(prefix): read(name) for name in sources}
        return mil_mixer_tensors(attention, config, layer, seed, dtype, fold_qk_norms)

    return _LayerMixer(make)

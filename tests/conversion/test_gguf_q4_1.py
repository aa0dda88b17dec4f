"""The Q4_1 dequantizer registered on transformers versions whose GGUF reader lacks it, against the ``gguf``
package's own dequantizer (llama.cpp's Python reference), and through transformers' reader."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from conversion.gguf_q4_1 import BLOCK_BYTES, GGML_Q4_1, dequantize_q4_1, register_q4_1_if_missing

gguf = pytest.importorskip("gguf")


def random_q4_1_blocks(count: int, seed: int = 0) -> np.ndarray:
    """``count`` Q4_1 blocks of random bytes, with finite float16 scales and minima of ordinary size."""
    generator = np.random.default_rng(seed)
    blocks = generator.integers(0, 256, size=(count, BLOCK_BYTES), dtype=np.uint8)
    blocks[:, 0:4] = generator.normal(0, 0.05, size=(count, 2)).astype(np.float16).view(np.uint8)
    return blocks


def test_q4_1_equals_the_gguf_packages_dequantizer():
    blocks = random_q4_1_blocks(64)
    expected = gguf.quants.dequantize(blocks.reshape(-1), gguf.GGMLQuantizationType.Q4_1).reshape(64, 32)
    got = dequantize_q4_1(torch.from_numpy(blocks), torch.float32)
    torch.testing.assert_close(got, torch.from_numpy(expected.astype(np.float32)), rtol=0, atol=1e-6)


def test_a_reader_without_q4_1_reads_it_once_registered_and_one_with_it_is_left_alone(monkeypatch):
    dequant = importlib.import_module("transformers.integrations.gguf.dequant")
    native = dequant._DEQUANT.get(GGML_Q4_1)
    assert register_q4_1_if_missing() is (native is None)  # after this call the reader has Q4_1 in any case
    assert register_q4_1_if_missing() is False
    if native is not None:
        assert dequant._DEQUANT[GGML_Q4_1] is native
    for table in ("GGML_BLOCK", "GGML_NAME", "_DEQUANT"):  # a reader as transformers 5.17-5.24 have it
        monkeypatch.delitem(getattr(dequant, table), GGML_Q4_1)
    with pytest.raises(ValueError, match="not supported yet"):
        dequant.dequantize(torch.zeros(BLOCK_BYTES, dtype=torch.uint8), GGML_Q4_1)
    assert register_q4_1_if_missing() is True
    blocks = random_q4_1_blocks(8, seed=1)
    expected = gguf.quants.dequantize(blocks.reshape(-1), gguf.GGMLQuantizationType.Q4_1)
    got = dequant.dequantize(torch.from_numpy(blocks.reshape(-1)), GGML_Q4_1)
    torch.testing.assert_close(got, torch.from_numpy(expected.astype(np.float32)), rtol=0, atol=1e-6)

"""Reading and writing safetensors checkpoints one tensor at a time, so that memory stays near one tensor.

Reading uses safetensors' ``safe_open``, reopened for every tensor: the returned tensor is backed by its own
memory map, whose pages become resident only as the tensor is used and are released with it, so the pages of
a whole shard never pile up in the process's resident memory.

Writing cannot use ``safetensors.torch.save_file``: it needs every tensor of the shard in memory and then
makes a bytes copy of each (about twice the shard). ``write_safetensors`` writes the same format (8-byte
little-endian header length, JSON header with dtype / shape / data_offsets, then the raw bytes; see the
safetensors README) from a plan whose shapes are known up front, computing and writing one tensor at a time.
Tests check that ``safe_open`` and ``from_pretrained`` read the result back exactly.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open

from .plan import PlannedTensor

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
_TORCH_DTYPES = {name: dtype for dtype, name in _DTYPE_NAMES.items()}


class CheckpointReader:
    """A safetensors checkpoint directory (one file or an index of shards), read one tensor at a time."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        index = self.directory / INDEX_FILE
        if index.is_file():
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        elif (self.directory / SINGLE_FILE).is_file():
            with safe_open(self.directory / SINGLE_FILE, framework="pt") as handle:
                weight_map = {name: SINGLE_FILE for name in handle.keys()}
        else:
            raise FileNotFoundError(
                f"{self.directory} has neither {SINGLE_FILE} nor {INDEX_FILE}; conversion reads safetensors "
                "checkpoints only (re-save a .bin checkpoint with save_pretrained(safe_serialization=True))"
            )
        self.files = sorted(set(weight_map.values()))
        self.names_by_file = {file: [] for file in self.files}
        for name, file in weight_map.items():
            self.names_by_file[file].append(name)
        self.weight_map = weight_map

    @property
    def names(self) -> list[str]:
        """All tensor names, grouped by file in file order (the order conversion writes them in)."""
        return [name for file in self.files for name in self.names_by_file[file]]

    def read(self, name: str) -> torch.Tensor:
        with safe_open(self.directory / self.weight_map[name], framework="pt") as handle:
            return handle.get_tensor(name)

    def dtype(self, name: str) -> torch.dtype:
        return self.layout(name)[1]

    def layout(self, name: str) -> tuple[tuple[int, ...], torch.dtype]:
        """Shape and dtype, from the header alone."""
        with safe_open(self.directory / self.weight_map[name], framework="pt") as handle:
            tensor = handle.get_slice(name)
            return tuple(tensor.get_shape()), _TORCH_DTYPES[tensor.get_dtype()]


def write_safetensors(path: Path, tensors: Iterable[PlannedTensor]) -> int:
    """Write ``tensors`` to ``path`` as a safetensors file; returns the bytes of tensor data."""
    tensors = list(tensors)
    header: dict[str, dict] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for entry in tensors:
        size = torch.empty((), dtype=entry.dtype).element_size() * math.prod(entry.shape)
        header[entry.name] = {"dtype": _DTYPE_NAMES[entry.dtype], "shape": list(entry.shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # align the data to 8 bytes, as safetensors does
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for entry in tensors:
            tensor = entry.compute()
            if tuple(tensor.shape) != entry.shape or tensor.dtype != entry.dtype:
                raise RuntimeError(f"{entry.name}: computed {tuple(tensor.shape)} {tensor.dtype}, planned {entry.shape} {entry.dtype}")
            handle.write(tensor.contiguous().view(-1).view(torch.uint8).numpy().data)
            del tensor
    return offset

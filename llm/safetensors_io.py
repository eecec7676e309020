"""Reading safetensors files tensor by tensor: memory-mapped where a tensor can be used as stored, else straight
into memory that already exists.

A safetensors file is an 8-byte little-endian header length, a JSON header ({name: {dtype, shape, data_offsets}}),
then the raw little-endian tensor bytes. `read_headers` indexes a checkpoint directory (one file, or the shards a
`model.safetensors.index.json` names) without reading any tensor. Then each tensor either
- is `mapped`: a CPU tensor over a private (copy-on-write) memory map of the file, when it is used as stored (same
  dtype, whole, on the CPU): no copy at all, pages read on first use and shared with the page cache; or
- is `read_into` its destination (an expert's row of a stacked parameter, another dtype, a GPU): with `readinto`
  into the destination's own memory when it is a CPU tensor of the file's dtype, else through a one-tensor staging
  copy. No mapping is touched for these, so their file pages never count in the process's resident memory.
So a load holds the parameters plus at most the largest single tensor.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from dataclasses import dataclass

import torch

from common.errors import InvalidArgumentError

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor's bytes are: file, [start, end) byte range, dtype, shape."""

    file: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


def checkpoint_files(path: str) -> list[str]:
    """The safetensors files of a checkpoint directory: the shards its index names, model.safetensors, or every
    *.safetensors file."""
    index = os.path.join(path, INDEX_FILE)
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return [os.path.join(path, name) for name in sorted(set(weight_map.values()))]
    single = os.path.join(path, SINGLE_FILE)
    if os.path.exists(single):
        return [single]
    found = sorted(n for n in os.listdir(path) if n.endswith(".safetensors"))
    if not found:
        raise InvalidArgumentError(f"no *.safetensors in {path!r} (pytorch_model.bin checkpoints are not supported)")
    return [os.path.join(path, n) for n in found]


def read_header(file: str) -> dict[str, TensorInfo]:
    """{tensor name: TensorInfo} of one safetensors file, from its header alone."""
    with open(file, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    base = 8 + n
    header.pop("__metadata__", None)
    out = {}
    for name, h in header.items():
        if h["dtype"] not in DTYPES:
            raise InvalidArgumentError(f"{file}: tensor {name} has dtype {h['dtype']}, which is not supported")
        dtype, shape = DTYPES[h["dtype"]], tuple(h["shape"])
        start, end = (base + o for o in h["data_offsets"])
        info = TensorInfo(file, dtype, shape, start, end)
        if end - start != info.numel * dtype.itemsize:
            raise InvalidArgumentError(
                f"{file}: tensor {name} holds {end - start} bytes, its shape needs more or fewer"
            )
        out[name] = info
    return out


def read_headers(path: str) -> dict[str, TensorInfo]:
    """{tensor name: TensorInfo} of a whole checkpoint directory."""
    out: dict[str, TensorInfo] = {}
    for file in checkpoint_files(path):
        for name, info in read_header(file).items():
            if name in out:
                raise InvalidArgumentError(f"tensor {name} is stored twice ({out[name].file} and {file})")
            out[name] = info
    return out


def _readinto(f, info: TensorInfo, dest: torch.Tensor) -> None:
    """The bytes of info into dest (contiguous CPU, info's dtype and numel); reads in a loop (a read(2) returns at
    most ~2 GB)."""
    buf = memoryview(dest.reshape(-1).view(torch.uint8).numpy())
    f.seek(info.start)
    got = 0
    while got < len(buf):
        n = f.readinto(buf[got:])
        if not n:
            raise InvalidArgumentError(f"{info.file} is truncated: a tensor ends past the end of the file")
        got += n


def read_tensor(f, info: TensorInfo) -> torch.Tensor:
    """One tensor, in fresh CPU memory, in the file's dtype. f: the file opened with open(file, 'rb', buffering=0)."""
    out = torch.empty(info.shape, dtype=info.dtype)
    if info.numel:
        _readinto(f, info, out)
    return out


def read_into(f, info: TensorInfo, dest: torch.Tensor) -> None:
    """Fill dest (the tensor's shape; any dtype and device) with the tensor info points at."""
    if not info.numel:
        return
    if dest.device.type == "cpu" and dest.dtype == info.dtype and dest.is_contiguous():
        _readinto(f, info, dest)  # straight into the parameter: no staging copy at all
    else:
        dest.copy_(read_tensor(f, info))  # converts the dtype and moves to the device; one tensor at a time


def open_mapped(file: str) -> mmap.mmap:
    """A private, copy-on-write map of a whole file: writes to a mapped tensor never reach the file."""
    with open(file, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)


def mappable(info: TensorInfo) -> bool:
    """Whether a tensor can be a view of the map: aligned for its dtype, and not empty."""
    return info.numel > 0 and info.start % info.dtype.itemsize == 0


def mapped(mm: mmap.mmap, info: TensorInfo) -> torch.Tensor:
    """The tensor as a CPU view of the file's map (it keeps the map alive)."""
    return torch.frombuffer(mm, dtype=info.dtype, count=info.numel, offset=info.start).view(info.shape)

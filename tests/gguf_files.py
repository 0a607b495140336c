"""A minimal GGUF writer for the llamacpp backend's tests: fake model files and LoRA adapters."""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

from pytest_ftgate.backends.gguf import read_gguf_header


def write_gguf(path: Path, metadata: dict[str, Any], tensors: dict[str, Any] | None = None) -> Path:
    """A GGUF v3 file: string / float32 / uint32 metadata and float32 tensors (numpy arrays,
    stored with GGUF's reversed dimension order, as gguf-py writes them)."""
    import numpy as np

    def string(text: str) -> bytes:
        data = text.encode()
        return struct.pack("<Q", len(data)) + data

    tensors = tensors or {}
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata)))
    for key, value in metadata.items():
        out += string(key)
        if isinstance(value, str):
            out += struct.pack("<I", 8) + string(value)
        elif isinstance(value, float):
            out += struct.pack("<If", 6, value)
        else:
            out += struct.pack("<II", 4, int(value))
    offset = 0
    blobs = []
    for name, array in tensors.items():
        data = np.ascontiguousarray(array, dtype=np.float32)
        out += string(name) + struct.pack("<I", data.ndim)
        out += b"".join(struct.pack("<Q", d) for d in reversed(data.shape))
        out += struct.pack("<IQ", 0, offset)  # type 0: F32
        blob = data.tobytes()
        blob += b"\0" * (-len(blob) % 32)
        blobs.append(blob)
        offset += len(blob)
    out += b"\0" * (-len(out) % 32)
    path.write_bytes(bytes(out) + b"".join(blobs))
    return path


def write_lora(
    path: Path,
    base: Path,
    *,
    modules: tuple[str, ...] = ("attn_q", "attn_v"),
    layers: tuple[int, ...] = (0, 1),
    rank: int = 4,
    strength: float = 1.0,
    seed: int = 0,
    architecture: str | None = None,
    in_features: int | None = None,
) -> Path:
    """A LoRA GGUF for ``base`` with random A and B (``strength=0``: B is zero, no effect).
    ``in_features`` overrides A's input size (an adapter for another base)."""
    import numpy as np

    header = read_gguf_header(base)
    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in layers:
        for module in modules:
            name = f"blk.{layer}.{module}.weight"
            (cols, rows), _ = header.tensors[name]  # GGUF order: (in, out)
            a = rng.normal(0.0, 1.0 / math.sqrt(cols), (rank, in_features or cols))
            b = rng.normal(0.0, 0.5, (rows, rank)) * strength
            tensors[f"{name}.lora_a"], tensors[f"{name}.lora_b"] = a, b
    meta = {
        "general.architecture": architecture or header.architecture,
        "general.type": "adapter",
        "adapter.type": "lora",
        "adapter.lora.alpha": float(rank),
    }
    return write_gguf(path, meta, tensors)

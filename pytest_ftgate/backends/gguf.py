"""GGUF files read without llama.cpp: ``find_gguf`` (the file a model or adapter argument means) and
``read_gguf_header`` (metadata and tensor table, memoised), so a wrong path gets an error that
names the file and the fix instead of a crash in C; ``quantize_gguf`` (``llama-quantize``); and
llama.cpp's log captured for error messages (``captured_log``, ``log_reason``). llama_cpp is imported
only inside the functions that call it. Used by the ``llamacpp`` backend.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pytest_ftgate.errors import AdapterError, ModelError

GGUF_MAGIC = b"GGUF"

# GGUF value types: 0 u8, 1 i8, 2 u16, 3 i16, 4 u32, 5 i32, 6 f32, 7 bool, 8 string, 9 array,
# 10 u64, 11 i64, 12 f64.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_ARRAY_KEEP = 64  # arrays longer than this (vocabularies, merges) are skipped, only counted


@dataclass(frozen=True)
class GGUFHeader:
    """The metadata and tensor table of a GGUF file (values of long arrays are left out)."""

    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, tuple[tuple[int, ...], int]]  # name -> (dims as GGUF orders them, type)

    @property
    def kind(self) -> str:
        return str(self.metadata.get("general.type", "model"))

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "?"))

    @property
    def context_length(self) -> int | None:
        value = self.metadata.get(f"{self.architecture}.context_length")
        return int(value) if isinstance(value, int) else None

    @property
    def chat_template(self) -> str | None:
        value = self.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) and value.strip() else None


class _Reader:
    def __init__(self, handle: BinaryIO, path: Path) -> None:
        self.handle = handle
        self.path = path

    def take(self, size: int) -> bytes:
        data = self.handle.read(size)
        if len(data) != size:
            raise EOFError
        return data

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        size = self.unpack("<Q")
        if size > 1 << 28:
            raise ValueError(f"string of {size} bytes")
        return self.take(size).decode("utf-8", errors="replace")

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == 8:
            return self.string()
        if kind == 9:
            inner = self.unpack("<I")
            count = self.unpack("<Q")
            if count <= _ARRAY_KEEP:
                return [self.value(inner) for _ in range(count)]
            if inner in _SCALARS:  # skip without reading element by element
                self.handle.seek(count * struct.calcsize(_SCALARS[inner]), os.SEEK_CUR)
            else:
                for _ in range(count):
                    self.value(inner)
            return ("array", count)
        raise ValueError(f"unknown GGUF value type {kind}")


_HEADERS: dict[tuple[str, int, int], GGUFHeader] = {}


def read_gguf_header(path: Path, *, role: str = "model", option: str = "--ftgate-base") -> GGUFHeader:
    """Parse a GGUF file's header. Raises ModelError (``role="model"``) or AdapterError naming the
    file and the fix when it is not a complete GGUF file. Memoised by (path, size, mtime)."""
    error = ModelError if role == "model" else AdapterError
    try:
        stat = path.stat()
    except OSError as exc:
        raise error(f"{role} file {path} cannot be read ({exc}): check {option}") from None
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _HEADERS:
        return _HEADERS[key]
    try:
        with path.open("rb") as raw:
            handle = _Reader(raw, path)  # type: ignore[arg-type]
            magic = raw.read(4)
            if magic != GGUF_MAGIC:
                hint = (
                    " (it is a safetensors file: convert the model with llama.cpp's convert_hf_to_gguf.py, or use "
                    "--ftgate-backend=transformers)"
                    if path.suffix == ".safetensors"
                    else ""
                )
                raise error(
                    f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF'){hint}: point {option} at a "
                    f".gguf file written by llama.cpp (convert_hf_to_gguf.py, llama-quantize)"
                )
            version = handle.unpack("<I")
            if version < 2:
                raise error(
                    f"{path} is a GGUF v{version} file, which llama.cpp no longer reads: convert the model again"
                )
            n_tensors = handle.unpack("<Q")
            n_kv = handle.unpack("<Q")
            meta: dict[str, Any] = {}
            for _ in range(n_kv):
                name = handle.string()
                meta[name] = handle.value(handle.unpack("<I"))
            tensors: dict[str, tuple[tuple[int, ...], int]] = {}
            for _ in range(n_tensors):
                name = handle.string()
                dims = tuple(handle.unpack("<Q") for _ in range(handle.unpack("<I")))
                kind = handle.unpack("<I")
                handle.unpack("<Q")  # data offset
                tensors[name] = (dims, kind)
    except (EOFError, ValueError, struct.error, UnicodeDecodeError) as exc:
        detail = "it ends inside its header" if isinstance(exc, EOFError) else str(exc)
        raise error(
            f"{path} is not a complete GGUF file ({detail}): it is truncated or corrupt; download or convert it again"
        ) from None
    header = GGUFHeader(path, version, meta, tensors)
    _HEADERS[key] = header
    return header


def find_gguf(value: str | os.PathLike[str], *, role: str = "model", option: str = "--ftgate-base") -> Path:
    """The GGUF file a model (or adapter) argument means: the file itself, or the only ``.gguf`` in a folder."""
    error = ModelError if role == "model" else AdapterError
    path = Path(value).expanduser()
    if not path.exists():
        raise error(
            f"{role} file {path} does not exist: check {option} (the llamacpp backend takes a .gguf file, or a "
            "folder that holds one)"
        )
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".gguf")
        if not found:
            raise error(
                f"{path} holds no .gguf file: point {option} at a GGUF file (the llamacpp backend reads GGUF only)"
            )
        if len(found) > 1:
            names = ", ".join(p.name for p in found[:6])
            raise error(f"{path} holds {len(found)} .gguf files ({names}): point {option} at the one to use")
        path = found[0]
    return path.resolve()


# -- llama.cpp's log, captured for error messages -----------------------------------------------


@contextlib.contextmanager
def captured_log() -> Iterator[list[str]]:
    """Collect llama.cpp's log lines while the block runs (continuation pieces joined to the line
    they continue), then give the log back to llama-cpp-python's own handler. The lines explain
    failed loads in our messages. (ggml's level numbers changed between versions, so lines are
    picked by their text, not their level.)"""
    import llama_cpp
    from llama_cpp import _logger

    lines: list[str] = []

    @llama_cpp.llama_log_callback  # type: ignore[misc]
    def collect(level: int, text: bytes, user_data: Any) -> None:
        piece = text.decode("utf-8", errors="replace")
        if level == 5 and lines:  # GGML_LOG_LEVEL_CONT
            lines[-1] += piece
        else:
            lines.append(piece)

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


_FAILURES = ("failed to apply lora adapter:", "error loading model:", "failed to quantize:", "failed to open", "error:")


def log_reason(lines: list[str], fallback: str) -> str:
    """llama.cpp's own explanation of a failure, from its log, without its function-name prefixes."""
    text = ""
    for line in reversed(lines):
        marker = next((m for m in _FAILURES if m in line), None)
        if marker is not None:
            text = line.split(marker, 1)[1] if marker.endswith(":") else line.split(": ", 1)[-1]
            break
    text = " ".join(text.split()).rstrip(".")
    if len(text) > 300:
        text = text[:300] + " ..."
    return text or fallback


# -- quantized exports (for candidate gates) ----------------------------------------------------

# llama.cpp file types by the names llama-quantize uses.
QUANT_TYPES = {
    "F16": "LLAMA_FTYPE_MOSTLY_F16",
    "BF16": "LLAMA_FTYPE_MOSTLY_BF16",
    "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "Q6_K": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "Q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "Q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0",
    "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "Q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1",
    "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "Q3_K_M": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "Q2_K": "LLAMA_FTYPE_MOSTLY_Q2_K",
}


def quantize_gguf(
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    kind: str,
    *,
    allow_requantize: bool = True,
    threads: int | None = None,
) -> Path:
    """Write ``source`` quantized as ``kind`` (``"Q4_K_M"``, ``"Q8_0"``, ``"F16"`` ...) to ``dest``, as
    ``llama-quantize`` does (``llama_model_quantize``). A quantized source is dequantized first
    (``allow_requantize``; ``kind="F16"`` turns a quantized GGUF into an f16 one). The file is written
    under a temporary name and moved into place. Tensors whose rows do not fit a k-quant's 256-value
    blocks get llama.cpp's fallback type, as with the command line tool."""
    import llama_cpp

    name = kind.upper()
    if name not in QUANT_TYPES:
        raise ModelError(f"unknown quantization {kind!r}: use one of {', '.join(QUANT_TYPES)}")
    src = find_gguf(source)
    read_gguf_header(src)
    target = Path(dest).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[name])
    params.allow_requantize = allow_requantize
    params.nthread = int(threads or os.cpu_count() or 1)
    with captured_log() as log:
        code = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
    if code != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        raise ModelError(f"llama.cpp could not quantize {src} to {name}: {log_reason(log, f'error {code}')}")
    os.replace(tmp, target)
    return target

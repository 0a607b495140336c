"""Adapter folders on disk: find, validate and describe them without importing any ML library.

Formats (detected from the files):

- ``mlx-tune``: ``save_pretrained`` of mlx-tune. ``adapters.safetensors`` (``...q_proj.lora_a`` /
  ``.lora_b``), ``adapter_config.json`` in mlx-lm shape with short ``keys`` (``self_attn.q_proj``),
  and the model's ``config.json`` beside them. Its recorded ``scale`` is ``alpha / r``, but mlx-tune
  trains with ``alpha / r**2`` (it passes ``alpha / r`` to mlx-vlm, which divides by ``r`` again), so
  the effective scale is ``scale / rank``.
- ``mlx-vlm``: the mlx-vlm trainer's ``adapters/`` folder (also written by mlx-tune's trainer into
  ``output_dir/adapters``): same weights, ``keys`` are full module paths
  (``language_model.model.layers.0.self_attn.q_proj``) and ``scale`` is the effective one.
- ``peft``: Hugging Face peft (Unsloth, transformers): ``adapter_model.safetensors`` with
  ``...lora_A.weight`` / ``...lora_B.weight``, ``adapter_config.json`` with ``peft_type``, ``r``,
  ``lora_alpha`` (effective scale ``lora_alpha / r``, or ``lora_alpha / sqrt(r)`` with rsLoRA).

Checks before any model loads: the files are complete, the config's rank agrees with the shapes
of the LoRA tensors, and every float tensor (F64, F32, F16, BF16; in a LoRA GGUF also quantized
ones) holds finite values only: a NaN or an infinity in an adapter makes every tuned logit NaN,
which no verdict may be drawn from. The data is scanned in chunks (numpy when installed, as it is
with every backend; plain Python otherwise), once per file version.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_ftgate.errors import AdapterError

MLX_WEIGHTS = "adapters.safetensors"
PEFT_WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
_PICKLES = ("adapter_model.bin", "adapters.npz", "adapter_model.pt")
_MAX_HEADER = 100 * 1024 * 1024
_LORA_SUFFIXES = (".lora_a", ".lora_b", ".lora_A.weight", ".lora_B.weight")
# Which axis of a 2-D LoRA tensor is the rank: mlx stores lora_a (in x r) and lora_b (r x out),
# peft lora_A.weight (r x in) and lora_B.weight (out x r).
_RANK_AXIS = {".lora_a": 1, ".lora_b": 0, ".lora_A.weight": 0, ".lora_B.weight": 1}
_CHUNK_BYTES = 1 << 24  # tensor data read at a time when looking for NaN and inf
# Float types by their safetensors / GGUF names: (unsigned integer view, exponent bits, mantissa
# bits). A value is not finite when all its exponent bits are set: NaN if a mantissa bit is too, else inf.
_FLOAT_BITS = {
    "F64": ("<u8", 0x7FF0000000000000, 0x000FFFFFFFFFFFFF),
    "F32": ("<u4", 0x7F800000, 0x007FFFFF),
    "F16": ("<u2", 0x7C00, 0x03FF),
    "BF16": ("<u2", 0x7F80, 0x007F),
}
_SCANNED: set[tuple[str, int, int]] = set()  # (path, size, mtime) of weights files found finite


@dataclass(frozen=True)
class AdapterInfo:
    """What an adapter folder holds. ``tensors`` maps each weight name to its shape."""

    path: Path
    format: str
    weights: Path
    config: dict[str, Any]
    rank: int
    scale: float
    targets: tuple[str, ...]
    tensors: dict[str, tuple[int, ...]] = field(repr=False)

    @property
    def short_targets(self) -> tuple[str, ...]:
        """Names (``q_proj``, ``down_proj`` ...) of the modules that carry LoRA weights."""
        modules = set()
        for name in self.tensors:
            for suffix in _LORA_SUFFIXES:
                if name.endswith(suffix):
                    modules.add(name[: -len(suffix)].rsplit(".", 1)[-1])
        return tuple(sorted(modules))

    def fingerprint(self) -> str:
        """sha256 over the weights file and the config: any change to either changes it."""
        if self.format == "gguf":
            return file_sha256(self.weights)
        digest = hashlib.sha256()
        for file in sorted(p for p in self.path.iterdir() if p.is_file()):
            if file.suffix in {".safetensors", ".json"}:
                digest.update(file.name.encode())
                digest.update(file_sha256(file).encode())
        return digest.hexdigest()


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class _Entry:
    """One tensor of a safetensors file: its dtype, shape and absolute byte range in the file."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


def read_safetensors_header(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a safetensors file, checking that the file is complete."""
    return {name: entry.shape for name, entry in _safetensors_table(path).items()}


def _safetensors_table(path: Path) -> dict[str, _Entry]:
    fix = "re-save the adapter (the file is truncated or not a safetensors file)"
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            raw = handle.read(8)
            if len(raw) < 8:
                raise ValueError("file shorter than a safetensors header")
            (length,) = struct.unpack("<Q", raw)
            if length <= 0 or length > min(_MAX_HEADER, size - 8):
                raise ValueError(f"header length {length} does not fit a {size}-byte file")
            header = json.loads(handle.read(length))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise AdapterError(f"{path} is not a valid safetensors file ({exc}): {fix}") from None
    if not isinstance(header, dict):
        raise AdapterError(f"{path} is not a valid safetensors file (header is not a table): {fix}")
    tensors: dict[str, _Entry] = {}
    end = 0
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            first, last = (int(offset) for offset in meta["data_offsets"])
            shape = tuple(int(d) for d in meta["shape"])
            tensors[name] = _Entry(str(meta["dtype"]), shape, 8 + length + first, 8 + length + last)
            end = max(end, last)
        except (KeyError, TypeError, ValueError, IndexError):
            raise AdapterError(f"{path} is not a valid safetensors file (bad entry {name!r}): {fix}") from None
    if 8 + length + end > size:
        raise AdapterError(f"{path} is truncated: it declares {8 + length + end} bytes but has {size}: {fix}")
    if not tensors:
        raise AdapterError(f"{path} holds no tensors: {fix}")
    return tensors


def _count_non_finite(raw: Any, dtype: str) -> tuple[int, int]:
    """(NaN count, infinity count) of the values of float type ``dtype`` in the bytes ``raw``."""
    view, exponent, mantissa = _FLOAT_BITS[dtype]
    try:
        import numpy as np
    except ImportError:  # every backend brings numpy; without it, one slower pass in Python
        bits = memoryview(raw).cast({"<u8": "Q", "<u4": "I", "<u2": "H"}[view])
        special = [b for b in bits if b & exponent == exponent]
        nan = sum(1 for b in special if b & mantissa)
        return nan, len(special) - nan
    values = np.frombuffer(raw, dtype=view)
    kind = values.dtype.type
    found = values[(values & kind(exponent)) == kind(exponent)]
    nan = int(np.count_nonzero(found & kind(mantissa)))
    return nan, len(found) - nan


def _non_finite_error(path: Path, name: str, nan: int, inf: int, total: int) -> AdapterError:
    counts = " and ".join(text for count, text in ((nan, f"{nan} NaN"), (inf, f"{inf} infinite")) if count)
    return AdapterError(
        f"adapter tensor {name} in {path} holds {counts} values (of {total}): the adapter is broken "
        "(training diverged?); retrain or pick an earlier checkpoint"
    )


def _once(path: Path, scan: Callable[[], None]) -> None:
    """Run ``scan`` (which raises on a broken file) once per version (path, size, mtime) of ``path``."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SCANNED:
        scan()
        _SCANNED.add(key)


def _check_finite(path: Path, table: dict[str, _Entry]) -> None:
    """Every float tensor of the safetensors file ``path`` must hold finite values only."""

    def scan() -> None:
        with path.open("rb") as handle:
            for name, entry in table.items():
                if entry.dtype not in _FLOAT_BITS:
                    continue
                nan = inf = 0
                handle.seek(entry.start)
                for offset in range(entry.start, entry.end, _CHUNK_BYTES):
                    found = _count_non_finite(handle.read(min(_CHUNK_BYTES, entry.end - offset)), entry.dtype)
                    nan, inf = nan + found[0], inf + found[1]
                if nan or inf:
                    raise _non_finite_error(path, name, nan, inf, math.prod(entry.shape))

    _once(path, scan)


def _check_gguf_finite(path: Path) -> None:
    """Every float or quantized tensor of a LoRA GGUF must hold finite values only. Needs the
    ``gguf`` package (in the mlx and torch extras); without it the backends' effect check, which refuses
    an adapter whose logits are not finite, is the check."""
    try:
        import numpy as np
        from gguf import GGUFReader
        from gguf.quants import dequantize
    except ImportError:
        return

    def scan() -> None:
        try:
            reader = GGUFReader(path)
        except Exception as exc:  # gguf raises ValueError, struct errors ... on a broken file
            raise AdapterError(f"{path} is not a readable GGUF file ({exc}): re-convert the adapter") from None
        file_type = reader.fields.get("general.type")
        if file_type is None or file_type.contents() != "adapter":
            return  # a whole model, not a LoRA: the llamacpp backend refuses it as an adapter
        for tensor in reader.tensors:
            kind = tensor.tensor_type.name
            nan = inf = 0
            if kind in _FLOAT_BITS:
                raw = np.ascontiguousarray(tensor.data).reshape(-1).view(np.uint8)
                for begin in range(0, raw.size, _CHUNK_BYTES):
                    found = _count_non_finite(raw[begin : begin + _CHUNK_BYTES], kind)
                    nan, inf = nan + found[0], inf + found[1]
            elif kind not in ("I8", "I16", "I32", "I64"):  # quantized blocks: their scales can be NaN or inf
                rows = tensor.data.reshape(-1, tensor.data.shape[-1])
                step = max(1, _CHUNK_BYTES // max(rows.shape[1], 1))
                for begin in range(0, rows.shape[0], step):
                    try:
                        values = dequantize(rows[begin : begin + step], tensor.tensor_type)
                    except NotImplementedError:  # a type this gguf version cannot dequantize
                        break
                    nan += int(np.count_nonzero(np.isnan(values)))
                    inf += int(np.count_nonzero(np.isinf(values)))
            if nan or inf:
                raise _non_finite_error(path, tensor.name, nan, inf, int(tensor.n_elements))

    _once(path, scan)


def _check_ranks(
    weights: Path, table: dict[str, _Entry], config: Path, what: str, rank_of: Callable[[str], int]
) -> None:
    """The rank the config gives each LoRA module (``rank_of(module)``) must be the rank its
    tensors have: a config and a weights file from different runs otherwise look like an adapter
    for another base model once loaded."""
    for name, entry in table.items():
        suffix = next((s for s in _LORA_SUFFIXES if name.endswith(s)), None)
        if suffix is None or len(entry.shape) != 2:
            continue
        expected = rank_of(name[: -len(suffix)])
        actual = entry.shape[_RANK_AXIS[suffix]]
        if actual != expected:
            raise AdapterError(
                f"the adapter's config and its weights disagree: {config} says {what}={expected}, but tensor "
                f"{name} in {weights} has shape {entry.shape}, rank {actual}. The config or the weights file is "
                "wrong, or they come from different training runs: save the adapter again (config and weights "
                "together), or copy the adapter_config.json written with these weights"
            )


def _load_config(path: Path) -> dict[str, Any]:
    file = path / CONFIG
    if not file.is_file():
        raise AdapterError(
            f"{path} has adapter weights but no {CONFIG}: copy the whole folder that save_pretrained wrote"
        )
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AdapterError(f"{file} is not valid JSON ({exc}): re-save the adapter") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{file} must hold a JSON object: re-save the adapter")
    return config


def inspect_adapter(path: str | Path) -> AdapterInfo:
    """Validate an adapter folder and describe it. Raises ``AdapterError`` with the fix."""
    folder = Path(path)
    option = "--ftgate-adapter"
    if not folder.exists():
        raise AdapterError(f"adapter folder {folder} does not exist: check the path given to {option}")
    if folder.is_file():
        if folder.suffix == ".gguf":
            return _gguf_adapter(folder)  # type: ignore[return-value]
        if folder.name in (MLX_WEIGHTS, PEFT_WEIGHTS):
            folder = folder.parent
        else:
            raise AdapterError(f"{folder} is a file: point {option} at the adapter folder that holds it")
    if (folder / "adapters" / MLX_WEIGHTS).is_file() and not (folder / MLX_WEIGHTS).is_file():
        folder = folder / "adapters"  # a trainer output_dir: its adapters/ subfolder
    gguf = _gguf_adapter(folder)
    if gguf is not None:
        return gguf
    if (folder / MLX_WEIGHTS).is_file():
        return _inspect_mlx(folder)
    if (folder / PEFT_WEIGHTS).is_file():
        return _inspect_peft(folder)
    pickles = [name for name in _PICKLES if (folder / name).is_file()]
    if pickles:
        raise AdapterError(
            f"{folder / pickles[0]} is a pickle file, which can run code when loaded; ftgate refuses it. "
            "Save the adapter as safetensors (peft: save_pretrained(..., safe_serialization=True))"
        )
    raise AdapterError(
        f"{folder} holds no adapter weights ({MLX_WEIGHTS} or {PEFT_WEIGHTS}): point {option} at the "
        "folder that save_pretrained (or the trainer's adapters/ output) wrote"
    )


def _gguf_adapter(path: Path) -> AdapterInfo | None:
    """A LoRA GGUF (llama.cpp's ``convert_lora_to_gguf.py``): a ``.gguf`` file, or a folder holding
    exactly one. The file's magic and its tensors' values are checked here; the llamacpp backend
    reads the rest."""
    files = [path] if path.is_file() else sorted(path.glob("*.gguf"))
    if len(files) != 1:
        return None
    with files[0].open("rb") as handle:
        if handle.read(4) != b"GGUF":
            raise AdapterError(f"{files[0]} is not a GGUF file (bad magic): re-convert the adapter")
    _check_gguf_finite(files[0])
    return AdapterInfo(files[0].parent, "gguf", files[0], {}, 0, 1.0, (), {})


def _positive(value: Any, file: Path, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = 0.0
    if number <= 0:
        raise AdapterError(f"{file} has no valid {what} ({value!r}): re-save the adapter")
    return number


def _inspect_mlx(folder: Path) -> AdapterInfo:
    weights = folder / MLX_WEIGHTS
    table = _safetensors_table(weights)
    tensors = {name: entry.shape for name, entry in table.items()}
    config = _load_config(folder)
    params = config.get("lora_parameters")
    if not isinstance(params, dict):
        raise AdapterError(f"{folder / CONFIG} has no lora_parameters: not an mlx LoRA adapter config")
    if config.get("fine_tune_type", "lora") != "lora":
        raise AdapterError(
            f"{folder / CONFIG}: fine_tune_type {config.get('fine_tune_type')!r} is not supported; ftgate gates LoRA adapters"
        )
    rank = int(_positive(params.get("rank"), folder / CONFIG, "rank"))
    _check_ranks(weights, table, folder / CONFIG, "rank", lambda module: rank)
    _check_finite(weights, table)
    recorded = _positive(params.get("scale", 1.0), folder / CONFIG, "scale")
    keys = tuple(str(k) for k in params.get("keys") or ())
    if not keys:  # no recorded targets: every module that carries LoRA weights
        keys = tuple(sorted({name.rsplit(".", 1)[0] for name in tensors}))
    full_paths = all(k.startswith("language_model.") for k in keys)
    # mlx-tune's save_pretrained writes short keys and the model's config.json beside; its recorded
    # scale is alpha / r while training used alpha / r**2. The trainer's copy records the real one.
    if not full_paths and (folder / "config.json").is_file() and "model" not in config:
        return AdapterInfo(folder, "mlx-tune", weights, config, rank, recorded / rank, keys, tensors)
    return AdapterInfo(folder, "mlx-vlm", weights, config, rank, recorded, keys, tensors)


def _inspect_peft(folder: Path) -> AdapterInfo:
    weights = folder / PEFT_WEIGHTS
    table = _safetensors_table(weights)
    tensors = {name: entry.shape for name, entry in table.items()}
    config = _load_config(folder)
    file = folder / CONFIG
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise AdapterError(
            f"{file}: peft_type {config.get('peft_type')!r} is not supported; ftgate gates LoRA adapters"
        )
    rank = int(_positive(config.get("r"), file, "r"))
    pattern = config.get("rank_pattern") if isinstance(config.get("rank_pattern"), dict) else {}
    _check_ranks(weights, table, file, "r", lambda module: _pattern_rank(pattern, module, rank))
    _check_finite(weights, table)
    alpha = _positive(config.get("lora_alpha", rank), file, "lora_alpha")
    scale = alpha / (rank**0.5) if config.get("use_rslora") else alpha / rank
    targets = config.get("target_modules") or ()
    keys = (targets,) if isinstance(targets, str) else tuple(str(t) for t in targets)
    return AdapterInfo(folder, "peft", weights, config, rank, scale, keys, tensors)


def _pattern_rank(pattern: dict[str, Any], module: str, rank: int) -> int:
    """The rank peft gives ``module``: the first ``rank_pattern`` key that matches the end of its
    name (peft's ``get_pattern_key``), else ``r``."""
    for key, value in pattern.items():
        try:
            if re.match(rf"(.*\.)?({key})$", module):
                return int(value)
        except (re.error, TypeError, ValueError):
            continue
    return rank

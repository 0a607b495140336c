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
"""

from __future__ import annotations

import hashlib
import json
import struct
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


def read_safetensors_header(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a safetensors file, checking that the file is complete."""
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
    tensors: dict[str, tuple[int, ...]] = {}
    end = 0
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            tensors[name] = tuple(int(d) for d in meta["shape"])
            end = max(end, int(meta["data_offsets"][1]))
        except (KeyError, TypeError, ValueError, IndexError):
            raise AdapterError(f"{path} is not a valid safetensors file (bad entry {name!r}): {fix}") from None
    if 8 + length + end > size:
        raise AdapterError(f"{path} is truncated: it declares {8 + length + end} bytes but has {size}: {fix}")
    if not tensors:
        raise AdapterError(f"{path} holds no tensors: {fix}")
    return tensors


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
    exactly one. Only the file's magic is checked here; the llamacpp backend reads the rest."""
    files = [path] if path.is_file() else sorted(path.glob("*.gguf"))
    if len(files) != 1:
        return None
    with files[0].open("rb") as handle:
        if handle.read(4) != b"GGUF":
            raise AdapterError(f"{files[0]} is not a GGUF file (bad magic): re-convert the adapter")
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
    tensors = read_safetensors_header(weights)
    config = _load_config(folder)
    params = config.get("lora_parameters")
    if not isinstance(params, dict):
        raise AdapterError(f"{folder / CONFIG} has no lora_parameters: not an mlx LoRA adapter config")
    if config.get("fine_tune_type", "lora") != "lora":
        raise AdapterError(
            f"{folder / CONFIG}: fine_tune_type {config.get('fine_tune_type')!r} is not supported; ftgate gates LoRA adapters"
        )
    rank = int(_positive(params.get("rank"), folder / CONFIG, "rank"))
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
    tensors = read_safetensors_header(weights)
    config = _load_config(folder)
    file = folder / CONFIG
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise AdapterError(
            f"{file}: peft_type {config.get('peft_type')!r} is not supported; ftgate gates LoRA adapters"
        )
    rank = int(_positive(config.get("r"), file, "r"))
    alpha = _positive(config.get("lora_alpha", rank), file, "lora_alpha")
    scale = alpha / (rank**0.5) if config.get("use_rslora") else alpha / rank
    targets = config.get("target_modules") or ()
    keys = (targets,) if isinstance(targets, str) else tuple(str(t) for t in targets)
    return AdapterInfo(folder, "peft", weights, config, rank, scale, keys, tensors)

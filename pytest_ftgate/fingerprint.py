"""Fingerprints: short, stable hashes of everything that determines a model's answers."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pytest_ftgate.adapters import file_sha256

# Files whose content defines a model folder's behaviour (weights are added by suffix).
_DEFINING = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "processor_config.json",
    "preprocessor_config.json",
    "tokenizer.model",
)
_WEIGHTS = (".safetensors", ".gguf", ".npz")
_MEMO = Path(os.environ.get("FTGATE_HASH_MEMO", Path.home() / ".cache" / "ftgate" / "hashes.json"))


def digest(value: Any) -> str:
    """sha256 of a JSON-serialisable value, key order independent."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _memo_hash(path: Path) -> str:
    """File hash, remembered by (path, size, mtime) so multi-GB weights are hashed once."""
    stat = path.stat()
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    try:
        memo: dict[str, str] = json.loads(_MEMO.read_text())
    except (OSError, ValueError):
        memo = {}
    if key in memo:
        return memo[key]
    value = file_sha256(path)
    memo[key] = value
    try:
        _MEMO.parent.mkdir(parents=True, exist_ok=True)
        tmp = _MEMO.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(memo))
        os.replace(tmp, _MEMO)
    except OSError:
        pass  # a read-only home only costs re-hashing
    return value


def model_fingerprint(folder: Path, extra: dict[str, Any] | None = None) -> str:
    """Hash of a model folder's config, tokenizer, chat template and weights, plus ``extra``."""
    parts: dict[str, Any] = dict(extra or {})
    if folder.is_dir():
        for file in sorted(folder.iterdir()):
            if file.is_file() and (file.name in _DEFINING or file.suffix in _WEIGHTS):
                parts[file.name] = _memo_hash(file)
    else:
        parts["model"] = str(folder)
    return digest(parts)

"""Fingerprints: short, stable hashes of everything that determines a model's answers."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pytest_ftgate.adapters import file_sha256

# Files whose content defines a model folder's behaviour, by what they define (weights: by suffix).
_GROUPS = {
    "config": ("config.json", "generation_config.json", "processor_config.json", "preprocessor_config.json"),
    "tokenizer": ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"),
    "chat_template": ("chat_template.jinja", "chat_template.json"),
}
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


def model_parts(folder: Path) -> dict[str, str]:
    """Hashes of a model folder's weights, config, tokenizer and chat template, each on its own so
    that a stale baseline can say which of them changed."""
    if not folder.is_dir():
        return {"model": str(folder)}
    files = sorted(f for f in folder.iterdir() if f.is_file())
    parts = {
        group: digest({f.name: _memo_hash(f) for f in files if f.name in names}) for group, names in _GROUPS.items()
    }
    parts["weights"] = digest({f.name: _memo_hash(f) for f in files if f.suffix in _WEIGHTS})
    return parts


def model_fingerprint(folder: Path, extra: dict[str, Any] | None = None) -> str:
    """One hash over ``model_parts(folder)`` and ``extra``."""
    return digest({**model_parts(folder), **(extra or {})})

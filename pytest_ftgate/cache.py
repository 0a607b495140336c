"""Prediction cache: one append-only JSONL file per (model, benchmark, generation settings) key.

Each record is written with a single ``write`` on a file opened with ``O_APPEND`` and starts with
a newline, so a record torn by an interrupted run can only spoil its own line (which fails to parse
and is ignored: that example is simply evaluated again), never the next record; two xdist workers
can append to the same file. The key is a hash of every fingerprint that determines
the answers, so an entry can never be served for another model, prompt or setting.

A cache can never change a verdict: every record carries an HMAC-SHA256 over (the key's digest,
the example id, the record) made with this machine's secret, ``$FTGATE_HOME/secret``, which lives
outside every project. A record edited by hand, copied to another id or another key's file,
written with another machine's secret, or with fields of the wrong type is ignored (one
``FtgateCacheWarning`` per file) and its example evaluated again. The default cache folder is
``$FTGATE_HOME/cache``, outside the repository; a folder given with ``--ftgate-cache`` is checked
with the same secret, so a cache committed to a repository is never trusted.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import secrets
import warnings
from pathlib import Path
from typing import Any

from pytest_ftgate.errors import ConfigError
from pytest_ftgate.fingerprint import digest
from pytest_ftgate.home import ftgate_home
from pytest_ftgate.options import DEFAULT_CACHE

SECRET_BYTES = 32
_FIELDS = {"id", "output", "logprobs", "mac"}


class FtgateCacheWarning(UserWarning):
    """Cache records that failed authentication or validation: ignored, their examples evaluated again."""


def cache_root(root: str | os.PathLike[str] | None) -> Path | None:
    """The cache folder: ``DEFAULT_CACHE`` means ``$FTGATE_HOME/cache``; ``None`` means no folder."""
    if root is None:
        return None
    if str(root) == DEFAULT_CACHE:
        return ftgate_home() / "cache"
    return Path(root).expanduser()


def machine_secret() -> bytes:
    """``$FTGATE_HOME/secret``, made on first use: random bytes, mode 0600, in place at once.

    The secret is written to a private temporary file and linked into place, so a process that
    races to create it (xdist workers) either wins or reads the complete secret of the winner."""
    path = ftgate_home() / "secret"
    if not path.exists():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"secret.{os.getpid()}.{secrets.token_hex(4)}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, secrets.token_bytes(SECRET_BYTES))
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)  # fails if another process made it first: then read theirs
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
        except OSError as error:
            raise ConfigError(
                f"cannot create the prediction cache's secret {path} ({error}): "
                "set FTGATE_HOME to a writable folder, or pass --ftgate-no-cache"
            ) from error
    try:
        secret = path.read_bytes()
    except OSError as error:
        raise ConfigError(
            f"cannot read the prediction cache's secret {path} ({error}): "
            "make it readable, set FTGATE_HOME to another folder, or pass --ftgate-no-cache"
        ) from error
    if len(secret) < SECRET_BYTES:
        raise ConfigError(
            f"the prediction cache's secret {path} is damaged ({len(secret)} bytes): delete it and "
            "a new one is made (cached predictions are then evaluated again)"
        )
    return secret


def _mac(secret: bytes, key_digest: str, example_id: str, record: dict[str, Any]) -> str:
    message = json.dumps([key_digest, example_id, record], sort_keys=True, separators=(",", ":"))
    return hmac.new(secret, message.encode(), hashlib.sha256).hexdigest()


def _well_formed(line: Any) -> bool:
    """A stored line: str id, output and mac; logprobs (optional) a dict of str -> finite number."""
    if not isinstance(line, dict) or not set(line) <= _FIELDS:
        return False
    if not all(isinstance(line.get(field), str) for field in ("id", "output", "mac")):
        return False
    logprobs = line.get("logprobs", {})
    return isinstance(logprobs, dict) and all(
        isinstance(answer, str)
        and isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        for answer, value in logprobs.items()
    )


class PredictionCache:
    """``get(key)`` -> {example id: record}; ``add(key, id, record)`` appends one record.

    A record is a small JSON object: ``{"output": ...}``, plus ``"logprobs"`` in logprob mode.
    Records are also kept in memory for the session, so ``root=None`` (``--ftgate-no-cache``)
    still never evaluates an example twice in one run."""

    def __init__(self, root: str | os.PathLike[str] | None = DEFAULT_CACHE) -> None:
        self.root = cache_root(root)
        self._memory: dict[str, dict[str, dict[str, Any]]] = {}
        self._secret: bytes | None = None
        self._warned: set[Path] = set()

    def _file(self, key_digest: str) -> Path | None:
        if self.root is None:
            return None
        return self.root / "predictions" / f"{key_digest[:32]}.jsonl"

    def _key_secret(self) -> bytes:
        if self._secret is None:
            self._secret = machine_secret()
        return self._secret

    def get(self, key: dict[str, Any]) -> dict[str, dict[str, Any]]:
        key_digest = digest(key)
        file = self._file(key_digest)
        entries = self._read(file, key_digest) if file is not None and file.is_file() else {}
        for example_id, record in self._memory.get(key_digest, {}).items():
            entries.setdefault(example_id, record)
        return entries

    def _read(self, file: Path, key_digest: str) -> dict[str, dict[str, Any]]:
        """The first authenticated record of each example; a warning when any line was refused."""
        secret = self._key_secret()
        entries: dict[str, dict[str, Any]] = {}
        refused = 0
        with file.open("rb") as handle:
            for raw in handle:
                try:
                    line = json.loads(raw)
                except ValueError:
                    continue  # empty, or torn by an interrupted run
                if not _well_formed(line):
                    refused += 1
                    continue
                record = {name: value for name, value in line.items() if name not in ("id", "mac")}
                if not hmac.compare_digest(line["mac"], _mac(secret, key_digest, line["id"], record)):
                    refused += 1
                    continue
                entries.setdefault(line["id"], record)
        if refused and file not in self._warned:
            self._warned.add(file)
            warnings.warn(
                f"ftgate: prediction cache {file}: {refused} record(s) ignored, they fail authentication or "
                "validation (edited, forged, or written with another FTGATE_HOME's secret); "
                "their examples are evaluated again",
                FtgateCacheWarning,
                stacklevel=3,
            )
        return entries

    def add(self, key: dict[str, Any], example_id: str, record: dict[str, Any]) -> None:
        key_digest = digest(key)
        self._memory.setdefault(key_digest, {})[example_id] = record
        file = self._file(key_digest)
        if file is None:
            return
        if not file.exists():
            file.parent.mkdir(parents=True, exist_ok=True)
            meta = file.with_suffix(".key.json")
            if not meta.exists():
                tmp = meta.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(key, indent=1, sort_keys=True, default=str))
                os.replace(tmp, meta)
        mac = _mac(self._key_secret(), key_digest, example_id, record)
        data = ("\n" + json.dumps({"id": example_id, **record, "mac": mac})).encode()
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

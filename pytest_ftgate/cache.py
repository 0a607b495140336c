"""Prediction cache: one append-only JSONL file per (model, benchmark, generation settings) key.

Each record is written with a single ``write`` on a file opened with ``O_APPEND`` and starts with
a newline, so a record torn by an interrupted run can only spoil its own line (which fails to parse
and is ignored: that example is simply evaluated again), never the next record; two xdist workers
can append to the same file. The key is a hash of every fingerprint that determines
the answers, so an entry can never be served for another model, prompt or setting.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pytest_ftgate.fingerprint import digest


class PredictionCache:
    """``get(key)`` -> {example id: record}; ``add(key, id, record)`` appends one record.

    A record is a small JSON object: ``{"output": ...}``, plus ``"logprobs"`` in logprob mode.
    Records are also kept in memory for the session, so ``root=None`` (``--ftgate-no-cache``)
    still never evaluates an example twice in one run."""

    def __init__(self, root: str | os.PathLike[str] | None) -> None:
        self.root = Path(root) if root else None
        self._memory: dict[str, dict[str, dict[str, Any]]] = {}

    def _file(self, key: dict[str, Any]) -> Path | None:
        if self.root is None:
            return None
        return self.root / "predictions" / f"{digest(key)[:32]}.jsonl"

    def get(self, key: dict[str, Any]) -> dict[str, dict[str, Any]]:
        memory = self._memory.get(digest(key), {})
        file = self._file(key)
        if file is None or not file.is_file():
            return dict(memory)
        entries: dict[str, dict[str, Any]] = dict(memory)
        with file.open("rb") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # empty, or torn by an interrupted run
                if isinstance(record, dict) and "id" in record and "output" in record:
                    entries[str(record.pop("id"))] = record
        return entries

    def add(self, key: dict[str, Any], example_id: str, record: dict[str, Any]) -> None:
        self._memory.setdefault(digest(key), {})[example_id] = record
        file = self._file(key)
        if file is None:
            return
        if not file.exists():
            file.parent.mkdir(parents=True, exist_ok=True)
            meta = file.with_suffix(".key.json")
            if not meta.exists():
                tmp = meta.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(key, indent=1, sort_keys=True, default=str))
                os.replace(tmp, meta)
        data = ("\n" + json.dumps({"id": example_id, **record})).encode()
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

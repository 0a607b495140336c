"""Report files written whole: ``atomic_write`` (a reader never sees half a file)."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path


def atomic_write(path: Path, payload: bytes) -> Path:
    """Write ``payload`` to a temporary file beside ``path``, then ``os.replace`` it: a reader never
    sees half a report. The file gets the usual permissions (umask), unlike ``mkstemp``'s 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("xb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


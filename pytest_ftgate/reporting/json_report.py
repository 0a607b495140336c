"""The JSON report file: its ``meta`` object, the report dict, writing and reading it back.

The schema (``pytest-ftgate/report``, version 1) is documented in ``reporting.record``, beside
the ``GateRecord`` whose ``to_dict`` makes each ``gates[]`` entry.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_ftgate.errors import ConfigError
from pytest_ftgate.reporting.files import atomic_write
from pytest_ftgate.reporting.record import OUTCOMES, SCHEMA, SCHEMA_VERSION, GateRecord, overall_outcome

# --- meta ------------------------------------------------------------------------------------


def make_meta(
    *,
    started: float | _dt.datetime | None = None,
    finished: float | _dt.datetime | None = None,
    backend: str | None = None,
    base: str | None = None,
    adapter: str | None = None,
    candidate: str | None = None,
    confidence: float | None = None,
    limit: int | None = None,
    mode: str | None = None,
    strict: bool | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The ``meta`` object of the reports. Times are epoch seconds or datetimes (UTC assumed)."""
    meta: dict[str, Any] = {
        "ftgate": _version(),
        "started": _iso(started),
        "finished": _iso(finished if finished is not None else _dt.datetime.now(_dt.timezone.utc)),
        "backend": backend,
        "base": base,
        "adapter": adapter,
        "candidate": candidate,
        "confidence": confidence,
        "limit": limit,
        "mode": mode,
        "strict": strict,
    }
    meta.update(extra)
    return meta


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pytest-ftgate")
    except PackageNotFoundError:  # running from a source tree
        return "unknown"


def _iso(moment: float | _dt.datetime | None) -> str | None:
    if moment is None:
        return None
    if not isinstance(moment, _dt.datetime):
        moment = _dt.datetime.fromtimestamp(float(moment), _dt.timezone.utc)
    elif moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.timezone.utc)
    return moment.astimezone(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")

# --- JSON ------------------------------------------------------------------------------------


def to_json(
    records: Sequence[GateRecord], *, meta: Mapping[str, Any] | None = None, pick: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON report as a dict (schema in the module docstring); ``pick``: ``--ftgate-pick``'s."""
    counts = {key: sum(r.outcome == key for r in records) for key in OUTCOMES}
    return {
        "schema": SCHEMA,
        "version": SCHEMA_VERSION,
        "meta": dict(meta) if meta is not None else make_meta(),
        "summary": {
            "gates": len(records),
            "passed": counts["pass"],
            "failed": counts["fail"],
            "inconclusive": counts["inconclusive"],
            "measured": counts["measured"],
            "errors": counts["error"],
            "outcome": overall_outcome(records),
        },
        "gates": [record.to_dict() for record in records],
        **({"pick": dict(pick)} if pick is not None else {}),
    }


def write_json(
    path: str | os.PathLike[str],
    records: Sequence[GateRecord],
    *,
    meta: Mapping[str, Any] | None = None,
    pick: Mapping[str, Any] | None = None,
) -> Path:
    """Write the JSON report atomically (temporary file, then ``os.replace``); parents are created."""
    import json

    data = to_json(records, meta=meta, pick=pick)
    text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False, default=str) + "\n"
    return atomic_write(Path(path), text.encode("utf-8"))


def load_json(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[GateRecord]]:
    """Read a report written by ``write_json``: ``(meta, records)``. Checks schema and version."""
    import json

    where = Path(path)
    try:
        data = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read ftgate report {where}: {exc}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ConfigError(f'{where} is not an ftgate report (no "schema": "{SCHEMA}")')
    if data.get("version") != SCHEMA_VERSION:
        raise ConfigError(
            f"{where} has report version {data.get('version')!r}; this pytest-ftgate reads version "
            f"{SCHEMA_VERSION}: upgrade pytest-ftgate or regenerate the report"
        )
    return dict(data.get("meta", {})), [GateRecord.from_dict(gate) for gate in data.get("gates", [])]


"""Reading benchmark data: JSON Lines files, local layouts, the Hub, and stable ids.

Every error is a :class:`DataError` that names the file (and line) and says how to fix it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_ftgate import hub
from pytest_ftgate.errors import DataError

if TYPE_CHECKING:
    from pytest_ftgate.benchmarks.example import Example

Row = dict[str, Any]


def read_jsonl(path: Path) -> Iterator[tuple[int, Row]]:
    """Yield ``(line_number, row)`` for each non-blank line of a JSON Lines file (1-based lines)."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise DataError(
            f"{path}: cannot open ({exc.strerror or exc}); check the path and its permissions"
        ) from exc
    with handle:
        for lineno, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{path}:{lineno}: not UTF-8 ({exc.reason}); re-save the file as UTF-8"
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno}); "
                    "each line must be one JSON object (JSON Lines)"
                ) from None
            if not isinstance(row, dict):
                raise DataError(
                    f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}; "
                    "each line must be one JSON object (JSON Lines)"
                )
            yield lineno, row


def load_rows(path: Path) -> list[tuple[int, Row]]:
    """All rows of a JSON Lines file; an empty file is an error."""
    rows = list(read_jsonl(path))
    if not rows:
        raise DataError(f"{path}: no rows; the file must hold one JSON object per line")
    return rows


def require(row: Row, field: str, where: str, *, fix: str = "") -> Any:
    """``row[field]``, or a DataError ``"FILE:LINE: missing field 'x'"`` (None counts as missing)."""
    value = row.get(field)
    if value is None:
        present = ", ".join(sorted(row)) or "none"
        hint = f"; {fix}" if fix else ""
        raise DataError(f"{where}: missing field {field!r} (fields present: {present}){hint}")
    return value


def require_str(row: Row, field: str, where: str, *, fix: str = "") -> str:
    """A non-empty string field (numbers are turned into text)."""
    value = require(row, field, where, fix=fix)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(f"{where}: field {field!r} must be text, got {type(value).__name__}")
    text = str(value)
    if not text.strip():
        raise DataError(f"{where}: field {field!r} is empty")
    return text


def content_id(prefix: str, *parts: str) -> str:
    """A stable id from content, for data without ids: ``prefix-<16 hex of sha256>``."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:16]
    return f"{prefix}-{digest}"


def dedupe_ids(ids: Iterable[str]) -> list[str]:
    """Make content ids unique in file order: the second copy of ``x`` becomes ``x#2``."""
    seen: dict[str, int] = {}
    out = []
    for ident in ids:
        seen[ident] = seen.get(ident, 0) + 1
        out.append(ident if seen[ident] == 1 else f"{ident}#{seen[ident]}")
    return out


def check_unique(ids: Sequence[tuple[str, str]], source: str) -> None:
    """``ids`` is ``(id, where)`` pairs; two rows with one explicit id is an error."""
    first: dict[str, str] = {}
    for ident, where in ids:
        if ident in first:
            raise DataError(
                f"{where}: duplicate id {ident!r} (first at {first[ident]}); "
                f"ids in {source} must be unique so base and tuned can be paired"
            )
        first[ident] = where


def finish_ids(built: Sequence[tuple[Example, bool, str]], source: str) -> list[Example]:
    """Final examples for ``(example, id_came_from_data, where)`` triples, in order, each with
    ``where`` as its ``source``.

    Ids from the data must be unique (else a DataError naming both lines); content-hash ids are
    made unique with :func:`dedupe_ids`.
    """
    check_unique([(ex.id, where) for ex, explicit, where in built if explicit], source)
    hashed = iter(dedupe_ids(ex.id for ex, explicit, _ in built if not explicit))
    return [
        dataclasses.replace(ex, id=ex.id if explicit else next(hashed), source=where)
        for ex, explicit, where in built
    ]


def resolve_local(data: str | Path, folder: str, filenames: Sequence[str], *, hint: str) -> Path:
    """Find a benchmark's local file.

    ``data`` is either a file (used as is) or a directory. For a directory the candidates are
    ``DIR/<folder>/<name>`` for each of ``filenames`` in order, then ``DIR/<name>`` when the
    directory itself is named ``<folder>`` (``--ftgate-data data/fpb``). ``hint`` says which files
    to pass, as an error's fix (``"pass {data}=DIR containing fpb/test.jsonl"``).
    """
    fix = hint + ", or leave {data} unset to download it from the Hugging Face hub"
    path = Path(data).expanduser()
    if path.is_file():
        return path
    if not path.exists():
        raise DataError(f"{path}: no such file or directory", fix=fix)
    candidates = [path / folder / name for name in filenames]
    if path.name.lower() == folder.lower():
        candidates += [path / name for name in filenames]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    raise DataError(f"{folder} data not found: looked for {looked}", fix=fix)


def hub_rows(repo: str, config: str | None, split: str, *, offline_hint: str) -> list[Row]:
    """Rows of a Hub dataset through ``datasets.load_dataset`` (imported here, not at import).

    ``offline_hint`` is the fix that needs no network, as an error's fix (``"pass {data}=DIR
    containing fpb/test.jsonl"``). The hub is probed first (``hub.prepare``): without a network,
    ``datasets`` reads its cache or fails at once instead of retrying, and the error says so."""
    label = f"{repo}" + (f" ({config})" if config else "") + f" split {split!r}"
    try:
        from datasets import load_dataset
    except ImportError:
        raise DataError(
            f"loading {label} from the Hugging Face hub needs the 'datasets' package",
            fix=f"pip install datasets, or {offline_hint}",
        ) from None
    online = hub.prepare()
    try:
        if config is None:
            dataset = load_dataset(repo, split=split)
        else:
            dataset = load_dataset(repo, config, split=split)
    except Exception as exc:  # network, auth, missing config: all end the same way for the user
        if not online:
            raise DataError(
                f"{label} is read from the Hugging Face hub, which cannot be reached "
                f"({hub.why_unreachable()}), and it is not in the local datasets cache",
                fix=offline_hint,
            ) from exc
        raise DataError(
            f"could not load {label} from the Hugging Face hub ({type(exc).__name__}: {exc})",
            fix=f"check the network or HF_TOKEN, or {offline_hint}",
        ) from exc
    return [dict(row) for row in dataset]

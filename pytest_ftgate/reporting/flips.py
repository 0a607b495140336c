"""Every lost and gained example of a run, as JSON Lines for review (``--ftgate-flips PATH``).

The reports show the first few lost examples; this file holds all of them, and the gained ones.
One object per line, grouped by test (node ids sorted, as in the JSON report), lost before
gained, each in the benchmark's order:

``nodeid``, ``benchmark``, ``id`` (the example), ``direction`` (``"lost"``: base right, tuned
wrong; ``"gained"``: the reverse), ``gold``, ``base_answer`` / ``tuned_answer`` (the answers
parsed from the replies, null: unparsed), ``text`` (the question), ``base_output`` /
``tuned_output`` (the replies, whole).

Text is raw, as the models and data gave it (JSON escapes it); a viewer must escape it for its
medium (``text.safe`` for a terminal).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_ftgate.reporting.files import atomic_write

if TYPE_CHECKING:
    from pytest_ftgate.results import Comparison


def flip_rows(nodeid: str, comparison: Comparison) -> list[dict[str, Any]]:
    """The rows of one test: its lost examples, then its gained ones."""
    rows = []
    for direction, flips in (("lost", comparison.lost), ("gained", comparison.gained)):
        for flip in flips:
            data = flip.to_dict()
            rows.append(
                {
                    "nodeid": nodeid,
                    "benchmark": comparison.benchmark,
                    "id": data.pop("id"),
                    "direction": direction,
                    "gold": data.pop("gold"),
                    "base_answer": data.pop("base_answer"),
                    "tuned_answer": data.pop("tuned_answer"),
                    **data,  # text, base_output, tuned_output
                }
            )
    return rows


def write_flips(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write the rows as JSON Lines, grouped by node id (sorted; a test's rows keep their order),
    atomically (parents are created)."""
    by_test: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_test.setdefault(str(row["nodeid"]), []).append(row)
    lines = [
        json.dumps(dict(row), ensure_ascii=False, allow_nan=False, default=str) + "\n"
        for nodeid in sorted(by_test)
        for row in by_test[nodeid]
    ]
    return atomic_write(Path(path), "".join(lines).encode("utf-8"))

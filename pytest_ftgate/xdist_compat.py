"""Keep ``--dist loadgroup`` grouping on pytest versions with structured node ids.

pytest-xdist (3.8 and earlier) tells its controller a test's ``xdist_group`` by appending
``@<group>`` to the test's node id on the worker, writing ``item._nodeid``. pytest 9 keeps node
ids in a structured ``item._id`` and no longer reads ``_nodeid``, so the suffix silently
disappears and grouped tests spread over all workers (pytest-xdist issue #1386, fix proposed in
pull request #1388). Without grouping every worker would load the gated model once more.

:func:`restore_group_suffixes` applies the fix of #1388 from outside: after xdist's own hook, an
item that carries ``xdist_group`` marks but no suffix gets it through its structured id. It does
nothing where xdist's renaming still works, so it can stay until a fixed xdist is required.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest


def group_names(item: pytest.Item) -> list[str]:
    """The item's ``xdist_group`` names, as xdist reads them (first argument or ``name=``)."""
    names = {str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")}
    return sorted(names)


def restore_group_suffixes(config: pytest.Config, items: Sequence[pytest.Item]) -> int:
    """On an xdist worker under ``--dist loadgroup``, give grouped items the ``@group`` node-id
    suffix xdist meant to add. Returns how many items were mended."""
    if not hasattr(config, "workerinput") or not config.getvalue("loadgroup"):
        return 0
    try:
        from _pytest.nodeid import coerce_node_id
    except ImportError:  # a pytest without structured ids: xdist's own renaming works there
        return 0
    mended = 0
    for item in items:
        names = group_names(item)
        suffix = "@" + "_".join(names)
        if names and not item.nodeid.endswith(suffix) and hasattr(item, "_id"):
            item._id = coerce_node_id(item.nodeid + suffix)
            mended += 1
    return mended

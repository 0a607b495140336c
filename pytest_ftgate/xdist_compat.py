"""Keep ``--dist loadgroup`` grouping on pytest versions with structured node ids.

pytest-xdist (3.8 and earlier) tells its controller a test's ``xdist_group`` by appending
``@<group>`` to the test's node id on the worker, writing ``item._nodeid``. pytest 9.2 keeps node
ids in a structured ``item._id`` and no longer reads ``_nodeid``, so the suffix silently
disappears and grouped tests spread over all workers (pytest-xdist issue #1386, fix proposed in
pull request #1388). Without grouping every worker would load the gated model once more.

This module loads in every project where ftgate and xdist are installed, so it stays out of the way:

- it acts only on an xdist worker under ``--dist loadgroup``, and reads that setting with a
  default, so a worker whose xdist does not define it is left alone;
- it steps aside when the installed xdist's own suffix took effect (a fixed xdist, or a pytest
  whose node ids are plain strings);
- the suffix is there for the scheduler only: :func:`add_group_suffixes` gives grouped items the
  ``@group`` suffix after xdist's own hook, the worker sends its collected ids to the controller
  at the end of collection, and :func:`restore_node_ids` then puts the original ids back. From
  there on the controller knows tests by their index in that list, so reports, the terminal
  summary, JUnit XML and ``--lf`` see ``test_x[1]``, as without xdist.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

_ORIGINAL_ID = pytest.StashKey[Any]()  # the item's structured id before the suffix


def group_names(item: pytest.Item) -> list[str]:
    """The item's ``xdist_group`` names, as xdist reads them (first argument or ``name=``)."""
    names = {str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")}
    return sorted(names)


def loadgroup_worker(config: pytest.Config) -> bool:
    """Whether this process is an xdist worker running ``--dist loadgroup``. The worker's xdist
    sets ``loadgroup``; read with a default, since a config without it must not raise."""
    return hasattr(config, "workerinput") and bool(config.getoption("loadgroup", default=False))


def has_group_suffix(nodeid: str) -> bool:
    """Whether xdist's scheduler reads a group from ``nodeid`` (its rule: an ``@`` after any ``]``)."""
    return nodeid.rfind("@") > nodeid.rfind("]")


def add_group_suffixes(config: pytest.Config, items: Sequence[pytest.Item]) -> int:
    """On an xdist worker under ``--dist loadgroup`` whose xdist's suffix did not take effect, give
    grouped items the ``@group`` suffix for the scheduler (:func:`restore_node_ids` takes it off
    again). Returns how many items got one; 0 where there is nothing to do."""
    if not loadgroup_worker(config):
        return 0
    try:
        from _pytest.nodeid import coerce_node_id
    except ImportError:  # a pytest without structured ids: xdist's own renaming works there
        return 0
    grouped = [(item, names) for item in items if (names := group_names(item))]
    if not grouped or any(has_group_suffix(item.nodeid) for item, _ in grouped) or not hasattr(grouped[0][0], "_id"):
        return 0  # xdist's suffix took effect: step aside
    for item, names in grouped:
        item.stash[_ORIGINAL_ID] = item._id
        item._id = coerce_node_id(f"{item.nodeid}@{'_'.join(names)}")
    return len(grouped)


def restore_node_ids(items: Sequence[pytest.Item]) -> int:
    """Put back the ids :func:`add_group_suffixes` changed; returns how many."""
    restored = 0
    for item in items:
        original = item.stash.get(_ORIGINAL_ID, None)
        if original is not None:
            item._id = original
            del item.stash[_ORIGINAL_ID]
            restored += 1
    return restored

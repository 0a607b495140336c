"""Keep ``--dist loadgroup`` grouping on pytest versions with structured node ids.

pytest-xdist (3.8 and earlier) tells its controller a test's ``xdist_group`` by appending
``@<group>`` to the test's node id on the worker, writing ``item._nodeid``. pytest 9.2 keeps node
ids in a structured ``item._id`` and no longer reads ``_nodeid``, so the suffix silently
disappears and grouped tests spread over all workers (pytest-xdist issue #1386, fix proposed in
pull request #1388). Without grouping every worker would load the gated model once more.

This module loads in every project where ftgate and xdist are installed, so it stays out of the way:

- it acts only on an xdist worker under ``--dist loadgroup``, and reads that setting with a
  default, so a worker whose xdist does not define it is left alone;
- the suffix goes only into the one message the scheduler reads it from: the worker's
  ``collectionfinish`` event, whose ``ids`` :func:`suffixes_for_scheduler` rewrites while the
  worker's ``pytest_collection_finish`` runs. Items keep their ids, so other plugins (syrupy
  records its selected tests there), reports, the terminal summary, JUnit XML and ``--lf`` see
  ``test_x[1]``, as without xdist; the controller knows tests by their index in that list;
- it steps aside for an id that already ends with its group suffix (a fixed xdist, or a pytest
  whose node ids are plain strings, where xdist's own renaming works).

Checked against pytest-xdist 3.8.0's own group tests (``testing/acceptance_test.py::TestGroupScope``)
on pytest 9.2.0: tests/test_xdist_compat.py's docstring has the figures.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest


def group_names(item: pytest.Item) -> list[str]:
    """The item's ``xdist_group`` names, as xdist reads them (first argument or ``name=``)."""
    names = {str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")}
    return sorted(names)


def loadgroup_worker(config: pytest.Config) -> bool:
    """Whether this process is an xdist worker running ``--dist loadgroup``. The worker's xdist
    sets ``loadgroup``; read with a default, since a config without it must not raise."""
    return hasattr(config, "workerinput") and bool(config.getoption("loadgroup", default=False))


def scheduler_ids(items: Sequence[pytest.Item], ids: Sequence[str]) -> list[str]:
    """``ids`` (one per item) with each grouped item's ``@group`` suffix, as xdist's scheduler reads
    groups; an id that already ends with it (xdist's own renaming took effect) is left as it is."""
    if len(ids) != len(items):
        return list(ids)  # not the list we know: leave it to xdist
    suffixes = ["@" + "_".join(names) if (names := group_names(item)) else "" for item in items]
    return [nodeid if nodeid.endswith(suffix) else nodeid + suffix for nodeid, suffix in zip(ids, suffixes)]


def _interactor(config: pytest.Config) -> Any | None:
    """The worker's xdist plugin that sends events to the controller (``WorkerInteractor``)."""
    for plugin in config.pluginmanager.get_plugins():
        if type(plugin).__name__ == "WorkerInteractor" and callable(getattr(plugin, "sendevent", None)):
            return plugin
    return None


@contextmanager
def suffixes_for_scheduler(config: pytest.Config, items: Sequence[pytest.Item]) -> Iterator[bool]:
    """Around a worker's ``pytest_collection_finish`` under ``--dist loadgroup``: the
    ``collectionfinish`` event xdist sends meanwhile carries :func:`scheduler_ids`. Yields whether
    it is in place (False: not a loadgroup worker, or no xdist worker plugin found)."""
    interactor = _interactor(config) if loadgroup_worker(config) else None
    if interactor is None:
        yield False
        return
    send = interactor.sendevent

    def sendevent(name: str, **kwargs: Any) -> None:
        if name == "collectionfinish" and "ids" in kwargs:
            kwargs["ids"] = scheduler_ids(items, kwargs["ids"])
        send(name, **kwargs)

    interactor.sendevent = sendevent
    try:
        yield True
    finally:
        interactor.sendevent = send

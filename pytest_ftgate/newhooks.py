"""Hook specifications that ftgate adds to pytest (registered through ``pytest_addhooks``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pytest_ftgate.backends import Backend


@pytest.hookspec(firstresult=True)
def pytest_ftgate_make_backend(name: str, config: pytest.Config) -> Backend | None:
    """Create the backend called ``name`` (the value of ``--ftgate-backend``), or return None to
    let another implementation (finally ftgate's own registry) handle it. A conftest or plugin
    adds a backend by implementing this hook."""

"""Where ftgate keeps per-machine state, outside every project: ``$FTGATE_HOME``.

It holds the embedded default model (``models/``), the prediction cache (``cache/``) and the secret
that authenticates that cache's records (``secret``). Nothing in it comes from a repository, so
nothing a pull request commits can stand in for it."""

from __future__ import annotations

import os
from pathlib import Path


def ftgate_home() -> Path:
    """``$FTGATE_HOME`` if set, else ``~/.cache/ftgate``."""
    home = os.environ.get("FTGATE_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "ftgate"

"""Whether the Hugging Face hub can be reached: one short probe per process, and offline mode when not.

The hub's clients (``huggingface_hub``, ``datasets``, ``transformers``) retry for tens of seconds
before they give up without a network. :func:`prepare` asks once per process, with a timeout of a
few seconds, whether the hub endpoint (``HF_ENDPOINT``, default ``https://huggingface.co``)
answers; when it does not, it turns their offline mode on for this process (``HF_HUB_OFFLINE=1``,
also in the modules already imported), so they read what they have cached or fail at once. An
offline setting made by the user (``HF_HUB_OFFLINE``, ``HF_DATASETS_OFFLINE``,
``TRANSFORMERS_OFFLINE``) is honoured without a probe.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

from pytest_ftgate.errors import ConfigError

DEFAULT_ENDPOINT = "https://huggingface.co"
TIMEOUT = 2.5  # seconds for the probe: the hub answers in well under a second when it is reachable
OFFLINE_SETTINGS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
_TRUE = ("1", "true", "yes", "on")
_answers: dict[str, bool] = {}  # endpoint -> reachable, asked once per process


def looks_local(model: str) -> bool:
    """A model is a hub id (``org/name``) unless it looks like a path."""
    return model.startswith((".", "/", "~")) or model.count("/") != 1


def refuse_shadowed(model: str, folder: str | os.PathLike[str], setting: str) -> None:
    """Refuse a model written as a hub id (``org/name``) when ``folder`` (where that name would be
    read from here) exists: the backends load a local folder first, so a folder committed under the
    hub id's name would silently stand in for the hub model (with no stored baseline, as the base)."""
    if not looks_local(model) and os.path.lexists(os.path.expanduser(folder)):
        raise ConfigError(
            f"{model} is written as a Hugging Face hub id, but {os.fspath(folder)} exists here under the "
            "same name and would be loaded instead of the hub model",
            fix=f"write {{{setting}}}=./{model} to mean the local folder, or remove or rename the folder "
            "to mean the hub id",
        )


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def offline_setting() -> str | None:
    """The environment variable that puts the hub clients offline, when one is set to true."""
    return next((name for name in OFFLINE_SETTINGS if os.environ.get(name, "").strip().lower() in _TRUE), None)


def reachable(timeout: float = TIMEOUT) -> bool:
    """Whether the hub answers: never with an offline setting; else one request to the endpoint
    (any HTTP answer counts; proxies from the environment are used, as the hub clients use them),
    asked once per process and endpoint."""
    if offline_setting() is not None:
        return False
    url = endpoint()
    if url not in _answers:
        _answers[url] = _probe(url, timeout)
    return _answers[url]


def _probe(url: str, timeout: float) -> bool:
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return True  # it answered, if only with an error status
    except (OSError, ValueError):  # URLError, timeouts, refused connections, a malformed HF_ENDPOINT
        return False
    return True


def why_unreachable() -> str:
    """Why the hub counts as unreachable, for error messages: the probe's answer (also once
    :func:`go_offline` has set ``HF_HUB_OFFLINE`` after it), else the user's offline setting."""
    if _answers.get(endpoint()) is False:
        return f"{endpoint()} did not answer within {TIMEOUT:g} s"
    return f"{offline_setting() or 'an offline setting'} is set"


def prepare() -> bool:
    """Call before ``datasets`` or ``huggingface_hub`` may go to the hub: returns whether the hub
    is reachable, and when it is not, puts the hub clients offline for this process (no retries)."""
    online = reachable()
    if not online:
        go_offline()
    return online


def go_offline() -> None:
    """Offline mode for the hub clients of this process: the environment, for clients imported
    later, and the constants of those already imported (they read the environment at import)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True  # type: ignore[attr-defined]
    config = sys.modules.get("datasets.config")
    if config is not None:
        config.HF_HUB_OFFLINE = True  # type: ignore[attr-defined]
        config.HF_DATASETS_OFFLINE = True  # type: ignore[attr-defined]


def forget() -> None:
    """Ask again on the next call (tests; a network that came back)."""
    _answers.clear()

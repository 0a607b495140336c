"""Command-line options and ini keys: names as constants, parsing into one ``Settings`` object."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_ftgate.errors import ConfigError
from pytest_ftgate.hub import looks_local, refuse_shadowed
from pytest_ftgate.modes import check_mode

if TYPE_CHECKING:
    import pytest

DEFAULT_BASE = "mlx-community/gemma-4-e4b-it-4bit"
# The prediction cache lives outside every project (pytest_ftgate.home), so a pull request cannot commit one.
DEFAULT_CACHE = "$FTGATE_HOME/cache"

ADAPTER = "--ftgate-adapter"
BASE = "--ftgate-base"
CANDIDATE = "--ftgate-candidate"
BACKEND = "--ftgate-backend"
BASE_URL = "--ftgate-base-url"
LIMIT = "--ftgate-limit"
DATA = "--ftgate-data"
CACHE = "--ftgate-cache"
NO_CACHE = "--ftgate-no-cache"
BATCH_SIZE = "--ftgate-batch-size"
CONFIDENCE = "--ftgate-confidence"
MODE = "--ftgate-mode"
STRICT = "--ftgate-strict"
EARLY_STOP = "--ftgate-early-stop"
REPORT = "--ftgate-report"
MARKDOWN = "--ftgate-markdown"
PLOT = "--ftgate-plot"
FLIPS = "--ftgate-flips"
MAX_DROP = "--ftgate-max-drop"
AUDIT = "--ftgate-audit"
LIST = "--ftgate-list"
PICK = "--ftgate-pick"
REFERENCE = "--ftgate-reference"
PICKS = ("final", "last-passing")

# option -> (help, default). Each has an ini key of the same name without dashes.
_OPTIONS: dict[str, tuple[str, str | None]] = {
    ADAPTER: (
        "LoRA adapter folder to gate (mlx-tune, mlx-vlm trainer or peft format); or a training output folder "
        "with checkpoints (checkpoint-N/, mlx NNNNNNN_adapters.safetensors), a glob or a comma-separated list",
        None,
    ),
    REFERENCE: (
        f"Adapter A to compare {ADAPTER} (B) with instead of the base: B must not be worse than A "
        "(the marker's thresholds, same examples, paired)",
        None,
    ),
    PICK: (
        f"Which checkpoint of {ADAPTER} the gates judge: final (the last one; default) or last-passing "
        "(each one; reports the last checkpoint that passes every gate, and fails when none does)",
        "final",
    ),
    BASE: (f"Base model: hub id or local folder (default {DEFAULT_BASE})", DEFAULT_BASE),
    CANDIDATE: ("A whole candidate model instead of an adapter", None),
    BACKEND: ("Backend: auto (the first installed) or one of {backends}; a conftest can add its own (default auto)", "auto"),
    BASE_URL: ("Server URL for the openai backend (default: $OPENAI_BASE_URL)", None),
    LIMIT: ("Evaluate N examples per benchmark: a seeded, stratified, stable subset", None),
    DATA: ("Read benchmark data from this local folder instead of the Hugging Face hub ({list} shows what is found)", None),
    CACHE: (
        f"Prediction cache folder (default {DEFAULT_CACHE}; FTGATE_HOME defaults to ~/.cache/ftgate). "
        "Records are authenticated with $FTGATE_HOME/secret wherever the folder is",
        DEFAULT_CACHE,
    ),
    BATCH_SIZE: ("Examples per forward batch (default: the backend chooses)", None),
    CONFIDENCE: ("Confidence level of intervals (default 0.95)", "0.95"),
    MODE: (
        "Scoring: generate (the seed protocol) or logprob (one pass, where a benchmark has fixed answers)",
        "generate",
    ),
    REPORT: ("Write a JSON report to PATH", None),
    MARKDOWN: ("Write a Markdown summary to PATH", None),
    PLOT: ("Write a PNG chart to PATH", None),
    FLIPS: (
        "Write every lost and gained example to PATH for review (JSON Lines: test, benchmark, example id, "
        "lost or gained, gold, both answers and replies, the question)",
        None,
    ),
    MAX_DROP: (
        "Default max_drop (points) for ftgate markers that set neither max_drop nor min_gain "
        "(without it such a marker only measures)",
        None,
    ),
    AUDIT: (
        "Re-evaluate N randomly drawn examples of each stored baseline with the base model and fail when "
        "its answers were not the base model's (default auto: 5 in 100 examples, at least 8, at most 100; 0: off)",
        "auto",
    ),
}
_FLAGS: dict[str, str] = {
    NO_CACHE: "Do not read or write the prediction cache",
    STRICT: "Pass only when the interval proves each threshold holds (default: judge the measured delta)",
    EARLY_STOP: "Evaluate shuffled chunks and stop once the verdict can no longer change (anytime-valid)",
}


def ini_name(option: str) -> str:
    """``--ftgate-adapter`` -> ``ftgate_adapter``."""
    return option.lstrip("-").replace("-", "_")


def option_name(setting: str) -> str:
    """The command-line option for a ``Gate`` keyword (``batch_size`` -> ``--ftgate-batch-size``):
    how the plugin names the settings in an error's fix (``FtgateError.render``)."""
    return "--ftgate-" + setting.replace("_", "-")


def _help(text: str) -> str:
    """Help text with the registries' names filled in: built-in backends and benchmarks."""
    from pytest_ftgate.backends import backend_names
    from pytest_ftgate.benchmarks import benchmark_names

    return text.format(backends=", ".join(backend_names()), benchmarks=", ".join(benchmark_names()), list=LIST)


def addoptions(parser: pytest.Parser) -> None:
    group = parser.getgroup("ftgate", "fine-tune regression gate (pytest-ftgate)")
    for option, (help_text, default) in _OPTIONS.items():
        group.addoption(option, action="store", dest=ini_name(option), default=None, help=_help(help_text))
        parser.addini(ini_name(option), _help(help_text), default=default)
    for option, help_text in _FLAGS.items():
        group.addoption(option, action="store_true", dest=ini_name(option), default=None, help=help_text)
        parser.addini(ini_name(option), help_text, type="bool", default=False)
    group.addoption(
        LIST,
        action="store_true",
        dest=ini_name(LIST),
        default=False,
        help=_help(
            "List the benchmarks ({benchmarks}, and those a conftest registers) with their sizes and "
            "scoring modes, then exit"
        ),
    )


@dataclass(frozen=True)
class Settings:
    """Everything the ``Gate`` needs, validated, with paths resolved against the rootdir."""

    base: str = DEFAULT_BASE
    adapter: str | None = None
    candidate: str | None = None
    backend: str = "auto"
    base_url: str | None = None
    limit: int | None = None
    data: str | None = None
    cache: str | None = DEFAULT_CACHE
    batch_size: int | None = None
    confidence: float = 0.95
    mode: str = "generate"
    strict: bool = False
    early_stop: bool = False
    report: str | None = None
    markdown: str | None = None
    plot: str | None = None
    flips: str | None = None  # JSON Lines of every lost and gained example
    max_drop: float | None = None  # default threshold for markers without one
    audit: int | str = "auto"
    reference: str | None = None  # adapter A: the side that replaces the base
    pick: str = "final"  # "final" or "last-passing"

    def gate_kwargs(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "adapter": self.adapter,
            "candidate": self.candidate,
            "backend": self.backend,
            "base_url": self.base_url,
            "data": self.data,
            "limit": self.limit,
            "cache": self.cache,
            "batch_size": self.batch_size,
            "confidence": self.confidence,
            "mode": self.mode,
            "audit": self.audit,
            "reference": self.reference,
        }


def _value(config: pytest.Config, option: str) -> Any:
    value = config.getoption(ini_name(option))
    return config.getini(ini_name(option)) if value is None else value


def positive_int(value: Any, what: str) -> int | None:
    """Parse an optional positive integer option; a clear ConfigError otherwise."""
    if value is None or value == "":
        return None
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}") from None
    if number <= 0:
        raise ConfigError(f"{what} must be a positive integer, got {number}")
    return number


def audit_size(value: Any) -> int | str:
    """``auto`` (the default rule, ``gate.audit_sample_size``) or a number of examples, 0 for off."""
    text = "auto" if value is None or value == "" else str(value).strip().lower()
    if text == "auto":
        return text
    try:
        number = int(text)
    except ValueError:
        number = -1
    if number < 0:
        raise ConfigError(f"{AUDIT} must be auto, 0 (off) or a number of examples, got {value!r}")
    return number


def default_max_drop(value: Any) -> float | None:
    """The project-wide default ``max_drop``: a finite number of points, at least 0."""
    if value is None or str(value).strip() == "":
        return None
    try:
        points = float(str(value).strip())
    except ValueError:
        points = math.nan
    if not math.isfinite(points) or points < 0:
        raise ConfigError(f"{MAX_DROP} must be a finite number of points >= 0 (e.g. 2.0), got {value!r}")
    return points


def confidence_level(value: Any) -> float:
    try:
        level = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{CONFIDENCE} must be a number between 0 and 1, got {value!r}") from None
    if not 0.5 <= level < 1.0:
        raise ConfigError(f"{CONFIDENCE} must be at least 0.5 and below 1 (e.g. 0.95), got {level}")
    return level


def pick_rule(value: Any) -> str:
    """``final`` (default) or ``last-passing``."""
    text = "final" if value is None or str(value).strip() == "" else str(value).strip().lower()
    if text not in PICKS:
        raise ConfigError(f"{PICK} must be one of {', '.join(PICKS)}, got {value!r}")
    return text


def adapter_paths(config: pytest.Config, value: str | None) -> str | None:
    """An adapter setting with each comma-separated part (a folder, a file or a glob) resolved
    against the invocation directory; a whole value that exists there is one path."""
    if not value:
        return None
    whole = _path(config, value)
    if whole is not None and os.path.exists(whole):
        return whole
    parts = [_path(config, part.strip()) for part in str(value).split(",") if part.strip()]
    return ",".join(part for part in parts if part) or None


def scoring_mode(value: Any) -> str:
    return check_mode(str(value or "generate"), source=MODE)


def _path(config: pytest.Config, value: str | None) -> str | None:
    """Resolve a relative path against the invocation directory, as users expect on the command line."""
    if not value:
        return None
    expanded = os.path.expanduser(value)
    if os.path.isabs(expanded):
        return expanded
    return str(config.invocation_params.dir / expanded)


def served_backend(name: str) -> bool:
    """Whether backend ``name`` takes served model NAMES (its class's ``capabilities.remote``): they
    are sent exactly as given, never resolved as paths (``--ftgate-base=base`` is the server's ``base``)."""
    from pytest_ftgate.backends import serves_names

    return serves_names(name)


def _model(config: pytest.Config, value: str | None, served: bool, setting: str) -> str | None:
    """A model is a hub id unless it looks like a local path; a served name is kept as is. A hub id
    that is also a folder here is refused (``hub.refuse_shadowed``): write ``./org/name`` for it."""
    if not value:
        return None
    if served:
        return str(value)
    local = _path(config, value)
    assert local is not None
    refuse_shadowed(str(value), local, setting)
    return local if looks_local(value) else value


def read_settings(config: pytest.Config) -> Settings:
    """Build the validated settings from command line and ini; raises ConfigError on bad values."""
    cache = _value(config, CACHE)
    cache = None if _value(config, NO_CACHE) else cache if cache == DEFAULT_CACHE else _path(config, cache)
    backend = str(_value(config, BACKEND) or "auto")
    served = served_backend(backend)
    return Settings(
        base=_model(config, _value(config, BASE), served, "base") or DEFAULT_BASE,
        adapter=adapter_paths(config, _value(config, ADAPTER)),
        candidate=_model(config, _value(config, CANDIDATE), served, "candidate"),
        backend=backend,
        base_url=_value(config, BASE_URL) or os.environ.get("OPENAI_BASE_URL"),
        limit=positive_int(_value(config, LIMIT), LIMIT),
        data=_path(config, _value(config, DATA)),
        cache=cache,
        batch_size=positive_int(_value(config, BATCH_SIZE), BATCH_SIZE),
        confidence=confidence_level(_value(config, CONFIDENCE)),
        mode=scoring_mode(_value(config, MODE)),
        strict=bool(_value(config, STRICT)),
        early_stop=bool(_value(config, EARLY_STOP)),
        report=_path(config, _value(config, REPORT)),
        markdown=_path(config, _value(config, MARKDOWN)),
        plot=_path(config, _value(config, PLOT)),
        flips=_path(config, _value(config, FLIPS)),
        max_drop=default_max_drop(_value(config, MAX_DROP)),
        audit=audit_size(_value(config, AUDIT)),
        reference=_path(config, _value(config, REFERENCE)),
        pick=pick_rule(_value(config, PICK)),
    )

"""The ``ftgate`` marker: ``@pytest.mark.ftgate("fpb", max_drop=2.0)``, validated at collection."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from pytest_ftgate import benchmarks
from pytest_ftgate.errors import ConfigError
from pytest_ftgate.modes import check_mode
from pytest_ftgate.results import check_thresholds

MARKER = "ftgate"
MARKER_HELP = (
    "ftgate(benchmark_or_list, *, max_drop=None, min_gain=None, strict=None, mode=None): gate a fine-tune on "
    "benchmarks; fails when the benchmark drops more than max_drop points or gains less than min_gain. "
    "Without either it only measures (unless ftgate_max_drop sets a project-wide max_drop)"
)
KEYWORDS = ("max_drop", "min_gain", "strict", "mode")


@dataclass(frozen=True)
class GateSpec:
    """One marker, validated: benchmark names and thresholds in points."""

    benchmarks: tuple[str, ...]
    max_drop: float | None = None
    min_gain: float | None = None
    strict: bool | None = None
    listed: bool = False  # list form: one test per benchmark
    mode: str | None = None  # "generate" or "logprob"; None: the run's --ftgate-mode

    @property
    def gated(self) -> bool:
        """Whether a threshold is set; without one the test measures and never fails."""
        return self.max_drop is not None or self.min_gain is not None


def parse_marker(args: tuple[Any, ...], kwargs: dict[str, Any], where: str) -> GateSpec:
    """Validate a marker's arguments; ConfigError names the test and the fix."""
    if len(args) != 1:
        raise ConfigError(
            f"{where}: @pytest.mark.ftgate takes one benchmark name or a list of them, got {len(args)} "
            'positional arguments (e.g. @pytest.mark.ftgate("fpb", max_drop=2.0))'
        )
    names = args[0]
    listed = isinstance(names, (list, tuple))
    names = tuple(names) if listed else (names,)
    if not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{where}: @pytest.mark.ftgate needs benchmark names as strings, got {args[0]!r}")
    for name in names:
        try:
            benchmarks.get_benchmark(name)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    for key in kwargs:
        if key not in KEYWORDS:
            hint = difflib.get_close_matches(key, KEYWORDS, n=1)
            did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(
                f"{where}: unknown @pytest.mark.ftgate keyword {key!r}.{did_you_mean} Known: {', '.join(KEYWORDS)}"
            )
    thresholds = {}
    for key in ("max_drop", "min_gain"):
        value = kwargs.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{where}: {key} must be a number of points, got {value!r}")
            thresholds[key] = float(value)
    try:
        check_thresholds(**thresholds)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if thresholds.get("max_drop", 0.0) < 0:
        raise ConfigError(f"{where}: max_drop must be >= 0 points (a drop of 2 points is max_drop=2.0)")
    strict = kwargs.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise ConfigError(f"{where}: strict must be True or False, got {strict!r}")
    mode = kwargs.get("mode")
    if mode is not None:
        for name in names:
            try:
                check_mode(mode, benchmarks.get_benchmark(name), source="mode")
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None
    return GateSpec(names, thresholds.get("max_drop"), thresholds.get("min_gain"), strict, listed, mode)

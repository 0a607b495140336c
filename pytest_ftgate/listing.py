"""``pytest --ftgate-list``: every registered benchmark with its size, answer kind and scoring modes."""

from __future__ import annotations

from collections.abc import Callable

from pytest_ftgate.benchmarks import Benchmark, benchmark_names, get_benchmark
from pytest_ftgate.errors import FtgateError, keyword
from pytest_ftgate.modes import MODES

COLUMNS = ("name", "title", "kind", "modes", "examples")  # examples last: it may hold an error


def from_hub(bench: Benchmark) -> bool:
    """Whether ``bench.load(None)`` reads the Hugging Face hub: it keeps ``Benchmark.load``
    (hub without data, local files with it) and has a hub source of its own."""
    cls = type(bench)
    return cls.load is Benchmark.load and cls.load_hub is not Benchmark.load_hub


def size(bench: Benchmark, data: str | None, name: Callable[[str], str] = keyword) -> str:
    """The number of examples, read without the network: ``hub`` for a hub benchmark without
    ``data``; an error's message (settings named by ``name``) when the examples cannot be read."""
    if data is None and from_hub(bench):
        return "hub"
    try:
        return str(len(bench.load(data)))
    except FtgateError as exc:
        return f"unreadable: {exc.render(name)}"


def modes(bench: Benchmark) -> str:
    return ", ".join(mode for mode in MODES if mode == "generate" or bench.supports_logprob)


def benchmark_table(data: str | None, name: Callable[[str], str] = keyword) -> list[str]:
    """The listing's lines: a header, one row per benchmark (sorted by name), and what ``hub`` means."""
    rows = [COLUMNS]
    for key in benchmark_names():
        try:
            bench = get_benchmark(key)
        except FtgateError as exc:  # a registered entry that cannot be built: say so in its row
            rows.append((key, "", "", "", f"unusable: {exc.render(name)}"))
            continue
        rows.append((key, bench.title or key, bench.kind, modes(bench), size(bench, data, name)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS) - 1)]
    lines = ["  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]]) for row in rows]
    if any(row[-1] == "hub" for row in rows[1:]):
        lines.append(f"hub: read from the Hugging Face hub on first use; {name('data')}=DIR reads local files and counts them")
    return lines

"""Help texts and ``pytest --ftgate-list`` (issue 14): the backends and benchmarks come from their
registries; the listing shows every benchmark (built-in, synthetic, registered by a conftest or a
test module) with its size and scoring modes, runs no test and exits 0."""

from __future__ import annotations

import json
import re

import pytest

from pytest_ftgate import options
from pytest_ftgate.backends import backend_names
from pytest_ftgate.benchmarks import benchmark_names

FAILING_TEST = """
import pytest_ftgate

pytest_ftgate.register_benchmark(
    pytest_ftgate.Benchmark.from_jsonl(
        "numbers", __import__("pathlib").Path(__file__).parent / "numbers.jsonl",
        system=None, template="{q}", answer="a", kind="numeric", title="Numbers",
    )
)

def test_never_runs():
    assert False
"""


def row(output: str, name: str) -> list[str]:
    """The cells of benchmark ``name``'s row (columns are two or more spaces apart)."""
    line = next(line for line in output.splitlines() if line.startswith(name + " "))
    return re.split(r"\s{2,}", line.strip())


def test_help_lists_the_built_in_backends_and_benchmarks(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    text = " ".join(result.stdout.str().split())  # help wraps lines
    assert f"one of {', '.join(backend_names())}" in text
    for name in ("transformers", "mlx", "openai", "llamacpp"):
        assert name in backend_names()
    assert f"List the benchmarks ({', '.join(benchmark_names())}, and those a conftest registers)" in text
    assert f"({options.LIST} shows what is found)" in text


def test_list_shows_every_benchmark_with_size_and_modes_then_exits(gate_project: pytest.Pytester) -> None:
    gate_project.path.joinpath("numbers.jsonl").write_text(
        "".join(json.dumps({"q": f"{i} + 1?", "a": str(i + 1)}) + "\n" for i in range(7))
    )
    gate_project.makepyfile(test_numbers=FAILING_TEST)
    result = gate_project.runpytest(options.LIST)
    assert result.ret == 0
    output = result.stdout.str()
    assert "test_never_runs" not in output and "failed" not in output
    assert row(output, "name") == ["name", "title", "kind", "modes", "examples"]
    assert row(output, "sentiment") == ["sentiment", "Sentiment", "label", "generate, logprob", "40"]  # conftest
    assert row(output, "numbers") == ["numbers", "Numbers", "numeric", "generate", "7"]  # a test module
    assert row(output, "fpb") == ["fpb", "FPB", "label", "generate, logprob", "hub"]
    assert row(output, "medmcqa") == ["medmcqa", "MedMCQA", "choice", "generate, logprob", "hub"]
    assert row(output, "convfinqa") == ["convfinqa", "ConvFinQA", "numeric", "generate", "hub"]
    probe = row(output, "finsent-probe")
    assert probe[2:4] == ["label", "generate, logprob"] and int(probe[4]) > 0
    assert int(row(output, "arith-probe")[4]) > 0
    result.stdout.fnmatch_lines(["hub: read from the Hugging Face hub on first use; --ftgate-data=DIR reads*"])


def test_list_counts_local_data_and_says_what_is_missing(gate_project: pytest.Pytester) -> None:
    fpb = gate_project.path / "data" / "fpb"
    fpb.mkdir(parents=True)
    rows = [{"sentence": f"Sales rose {i}%.", "label": "positive"} for i in range(3)]
    (fpb / "sentences_50agree.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = gate_project.runpytest(options.LIST, f"{options.DATA}=data")
    assert result.ret == 0
    output = result.stdout.str()
    assert row(output, "fpb")[-1] == "3"
    medmcqa = row(output, "medmcqa")[-1]
    assert medmcqa.startswith("unreadable: medmcqa data not found: looked for ")
    assert "pass --ftgate-data=DIR containing medmcqa/validation.jsonl" in medmcqa
    assert "hub: read from" not in output

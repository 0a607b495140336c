"""Stored baselines (syrupy snapshots): record, reuse without running the base, detect staleness."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_ftgate import options

GATE_TEST = """
import pytest

@pytest.mark.ftgate("sentiment", max_drop=2.0)
def test_gate():
    pass

def test_calls():
    import conftest
    print("CALLS", conftest.CALLS["examples"])
"""


@pytest.fixture(params=["serial", "xdist"])
def run(  # type: ignore[no-untyped-def]
    request: pytest.FixtureRequest, gate_project: pytest.Pytester, fake_adapter_folder: Callable[..., Path]
):
    """Run the gate project serially or with ``-n 2`` (the base-call count is per process then)."""
    if request.param == "xdist":
        pytest.importorskip("xdist")
    gate_project.makepyfile(GATE_TEST)
    adapter = fake_adapter_folder()
    xdist = ["-n", "2"] if request.param == "xdist" else []

    def run(*extra: str) -> pytest.RunResult:
        # no prediction cache: only the stored baseline can save the base model's work
        return gate_project.runpytest(f"{options.ADAPTER}={adapter}", options.NO_CACHE, "-s", *xdist, *extra)

    run.serial = not xdist  # type: ignore[attr-defined]
    return run


def snapshot_file(pytester: pytest.Pytester) -> dict:  # type: ignore[type-arg]
    files = list((pytester.path / "__snapshots__").rglob("*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


def test_cycle(run, gate_project: pytest.Pytester) -> None:  # type: ignore[no-untyped-def]
    first = run()
    first.assert_outcomes(passed=2)
    record = snapshot_file(gate_project)
    assert record["benchmark"] == "sentiment" and record["n"] == 40 and record["score"] == 100.0
    assert set(record["fingerprint"]) >= {"benchmark", "examples", "generation"}
    assert record["predictions"]["s000"] == {"correct": True, "parsed": "positive", "output": "positive"}

    second = run()
    second.assert_outcomes(passed=2)
    unaudited = run(f"{options.AUDIT}=0")
    unaudited.assert_outcomes(passed=2)
    if run.serial:
        first.stdout.fnmatch_lines(["*CALLS 80*"])  # base + tuned
        second.stdout.fnmatch_lines(["*CALLS 48*"])  # tuned + the audit's 8 base examples (max(8, 5%) of 40)
        unaudited.stdout.fnmatch_lines(["*CALLS 40*"])  # tuned only: the base model was not run

    # a changed prompt invalidates the baseline, with the fix in the message
    conftest = gate_project.path / "conftest.py"
    conftest.write_text(conftest.read_text().replace("Answer with one word.", "Answer in one word."))
    stale = run()
    stale.assert_outcomes(passed=1, errors=1)
    stale.stdout.fnmatch_lines(
        [
            "*baseline was recorded for another prompt, parsing or benchmark version: "
            "run pytest --snapshot-update to re-record it*"
        ]
    )

    updated = run("--snapshot-update")
    updated.assert_outcomes(passed=2)
    assert snapshot_file(gate_project)["fingerprint"] != record["fingerprint"]
    run().assert_outcomes(passed=2)


def test_changed_base_model_is_named(run, gate_project: pytest.Pytester) -> None:  # type: ignore[no-untyped-def]
    run().assert_outcomes(passed=2)
    (gate_project.path / "other-base").mkdir()
    stale = run(f"{options.BASE}=other-base")
    stale.assert_outcomes(passed=1, errors=1)
    stale.stdout.fnmatch_lines(["*baseline was recorded for another base model: run pytest --snapshot-update*"])


def test_changed_limit_is_named(run, gate_project: pytest.Pytester) -> None:  # type: ignore[no-untyped-def]
    run().assert_outcomes(passed=2)
    stale = run(f"{options.LIMIT}=20")
    stale.stdout.fnmatch_lines(["*another set of examples (--ftgate-limit or the data changed)*"])

"""The prediction cache: torn writes, keys, and a run killed midway that resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_ftgate import options
from pytest_ftgate.cache import PredictionCache

KEY = {"model": "m", "benchmark": "b", "mode": "generate", "max_tokens": 8}


def test_round_trip_and_keys_never_mix(tmp_path: Path) -> None:
    cache = PredictionCache(tmp_path)
    cache.add(KEY, "a", {"output": "positive"})
    cache.add(KEY, "b", {"output": "line one\nline two", "logprobs": {"A": -0.5}})
    assert cache.get(KEY) == {
        "a": {"output": "positive"},
        "b": {"output": "line one\nline two", "logprobs": {"A": -0.5}},
    }
    assert cache.get({**KEY, "model": "other"}) == {}
    assert PredictionCache(None).get(KEY) == {}


def test_torn_record_spoils_only_itself(tmp_path: Path) -> None:
    cache = PredictionCache(tmp_path)
    cache.add(KEY, "a", {"output": "positive"})
    (file,) = (tmp_path / "predictions").glob("*.jsonl")
    with file.open("ab") as handle:
        handle.write(b'\n{"id": "b", "outp')  # killed mid-write
    cache.add(KEY, "c", {"output": "neutral"})
    assert cache.get(KEY) == {"a": {"output": "positive"}, "c": {"output": "neutral"}}


GATE_TEST = """
import pytest

@pytest.mark.ftgate("sentiment", max_drop=2.0)
def test_gate():
    pass

def test_calls():
    import conftest
    print("CALLS", conftest.CALLS["examples"])
"""


def test_killed_run_resumes_with_every_complete_entry(
    gate_project: pytest.Pytester, fake_adapter_folder: Callable[..., Path]
) -> None:
    gate_project.makepyfile(GATE_TEST)
    adapter = fake_adapter_folder(fake_flips=6)
    args = [
        sys.executable,
        "-m",
        "pytest",
        "-s",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:syrupy",
        f"{options.ADAPTER}={adapter}",
        f"{options.BATCH_SIZE}=1",
        f"{options.CACHE}=cache",
    ]
    env = {**os.environ, "FAKE_DELAY": "0.05"}
    process = subprocess.Popen(args, cwd=gate_project.path, env=env, stdout=subprocess.DEVNULL)
    predictions = gate_project.path / "cache" / "predictions"
    deadline = time.monotonic() + 60
    written = 0
    while written < 15 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
        written = sum(f.read_text().count('"id"') for f in predictions.glob("*.jsonl")) if predictions.exists() else 0
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 15 <= written < 80, f"the run was not killed midway ({written} entries)"
    done = sum(len(PredictionCache(gate_project.path / "cache").get(_key(f))) for f in predictions.glob("*.key.json"))

    resumed = subprocess.run(args, cwd=gate_project.path, capture_output=True, text=True)
    assert f"CALLS {80 - done}" in resumed.stdout, resumed.stdout  # every complete entry was reused
    fresh = subprocess.run(
        [*args[:-1], f"{options.CACHE}=fresh"], cwd=gate_project.path, capture_output=True, text=True
    )
    assert "CALLS 80" in fresh.stdout
    verdict = "Sentiment dropped 15.0 points (100.0 -> 85.0) after fine-tuning; allowed 2.0. 40 examples: 6 lost"
    assert verdict in resumed.stdout and verdict in fresh.stdout


def _key(meta: Path) -> dict:  # type: ignore[type-arg]
    import json

    return json.loads(meta.read_text())


def test_default_cache_is_under_ftgate_home_not_the_project(
    gate_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, fake_adapter_folder: Callable[..., Path]
) -> None:
    """A pull request can commit files in the project, never in $FTGATE_HOME: the default is there."""
    gate_project.makepyfile(GATE_TEST)
    adapter = fake_adapter_folder(fake_flips=6)
    home = gate_project.path.parent / f"{gate_project.path.name}-home"
    monkeypatch.setenv("FTGATE_HOME", str(home))
    result = gate_project.runpytest("-p", "no:syrupy", f"{options.ADAPTER}={adapter}")
    result.assert_outcomes(failed=1, passed=1)
    assert len(list((home / "cache" / "predictions").glob("*.jsonl"))) == 2
    assert not (gate_project.path / ".ftgate").exists()
    assert (home / "secret").is_file()

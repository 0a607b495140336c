"""Red team: a forged prediction cache must never change a verdict.

The honest verdict: the tuned model gets 12 of 40 examples wrong, a 30-point drop against
``max_drop=2.0``, so the gate fails. Each attack below writes cache records meant to turn it green
(or to ruin the base side and fake a gain); each must be refused with one warning line per
cache file and the examples evaluated again."""

from __future__ import annotations

import json
import os
import stat
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_ftgate import options
from pytest_ftgate.cache import PredictionCache

LABELS = ["positive", "negative", "neutral"]
FLIPS = 12
HONEST = "Sentiment dropped 30.0 points (100.0 -> 70.0) after fine-tuning; allowed 2.0"
GATE_TEST = """
import pytest

@pytest.mark.ftgate("sentiment", max_drop=2.0)
def test_gate():
    pass

def test_calls():
    import conftest
    print("CALLS", conftest.CALLS["examples"])
"""
WARNING = "FtgateCacheWarning"


def gold(example_id: str) -> str:
    return LABELS[int(example_id[1:]) % 3]


def write_fake_adapter(folder: Path, flips: int) -> Path:
    """The fake backend's adapter (see tests/conftest.py): a safetensors header and a config."""
    folder.mkdir(parents=True, exist_ok=True)
    name = "language_model.model.layers.0.self_attn.q_proj"
    header = json.dumps({f"{name}.lora_a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}).encode()
    (folder / "adapters.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    config = {
        "fine_tune_type": "lora",
        "num_layers": 1,
        "lora_parameters": {"rank": 2, "scale": 1.0, "dropout": 0.0, "keys": [name]},
        "fake_flips": flips,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture
def project(gate_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    gate_project.makepyfile(GATE_TEST)
    write_fake_adapter(gate_project.path / "lora", FLIPS)
    monkeypatch.setenv("FTGATE_HOME", str(gate_project.path / "home"))
    return gate_project


def run(project: pytest.Pytester, *args: str) -> pytest.RunResult:
    return project.runpytest("-s", "-p", "no:randomly", "-p", "no:syrupy", f"{options.ADAPTER}=lora", *args)


def key_files(cache: Path) -> dict[str, Path]:
    """{"base": file, "tuned": file} of a cache folder filled by one run."""
    files = {}
    for meta in (cache / "predictions").glob("*.key.json"):
        role = "tuned" if "+" in json.loads(meta.read_text())["model"] else "base"
        files[role] = meta.with_name(meta.name.replace(".key.json", ".jsonl"))
    assert set(files) == {"base", "tuned"}, files
    return files


def lines(file: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]


def append(file: Path, records: list[dict[str, Any]]) -> None:
    with file.open("a") as handle:
        for record in records:
            handle.write("\n" + json.dumps(record))


def assert_honest(result: pytest.RunResult, warnings: int = 1) -> None:
    result.assert_outcomes(failed=1, passed=1)
    assert HONEST in result.stdout.str()
    text = result.stdout.str()
    assert text.count(WARNING) == warnings, text
    assert text.count("evaluated again") == warnings, text


# -- attacks on this machine's own cache ---------------------------------------------------------


def forge_plain(files: dict[str, Path]) -> None:
    """Appended records that give every tuned answer right (the last record used to win)."""
    append(files["tuned"], [{"id": r["id"], "output": gold(r["id"])} for r in lines(files["tuned"])])


def forge_with_made_up_mac(files: dict[str, Path]) -> None:
    append(files["tuned"], [{**r, "output": gold(r["id"])} for r in lines(files["tuned"])])


def forge_copy_to_other_id(files: dict[str, Path]) -> None:
    """A valid record of a right answer copied under the id of each example the tuned model lost."""
    records = lines(files["tuned"])
    right = {gold(r["id"]): r for r in records if r["output"] == gold(r["id"])}
    append(files["tuned"], [{**right[gold(r["id"])], "id": r["id"]} for r in records if r["output"] != gold(r["id"])])


def forge_from_other_key(files: dict[str, Path]) -> None:
    """The base's (valid, all right) records appended to the tuned model's file."""
    append(files["tuned"], lines(files["base"]))


def forge_wrong_types_base(files: dict[str, Path]) -> None:
    """Base answers that are not text: served as "None" they ruined the base and faked a gain."""
    records = lines(files["base"])
    bad: list[Any] = [None, 1, ["x"], {"text": "x"}]
    files["base"].write_text("".join("\n" + json.dumps({**r, "output": bad[i % 4]}) for i, r in enumerate(records)))


def forge_wrong_types_tuned(files: dict[str, Path]) -> None:
    """A list holding the right word was served as its text, which parses as that word."""
    append(files["tuned"], [{"id": r["id"], "output": [gold(r["id"])]} for r in lines(files["tuned"])])


def forge_bad_logprobs(files: dict[str, Path]) -> None:
    append(
        files["tuned"],
        [{"id": r["id"], "output": gold(r["id"]), "logprobs": {"positive": "high"}} for r in lines(files["tuned"])],
    )


ATTACKS: dict[str, Callable[[dict[str, Path]], None]] = {
    "plain": forge_plain,
    "made-up-mac": forge_with_made_up_mac,
    "copied-to-other-id": forge_copy_to_other_id,
    "from-other-key": forge_from_other_key,
    "wrong-types-base": forge_wrong_types_base,
    "wrong-types-tuned": forge_wrong_types_tuned,
    "bad-logprobs": forge_bad_logprobs,
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_forged_records_never_change_the_verdict(project: pytest.Pytester, attack: str) -> None:
    assert_honest(run(project, f"{options.CACHE}=cache"), warnings=0)
    ATTACKS[attack](key_files(project.path / "cache"))
    result = run(project, f"{options.CACHE}=cache")
    assert_honest(result)
    if attack == "wrong-types-base":
        assert "CALLS 40" in result.stdout.str()  # every base example evaluated again


def test_cache_from_another_ftgate_home_is_evaluated_again(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attacker's own machine (another secret) writes a cache that says the tuned model is right."""
    monkeypatch.setenv("FTGATE_HOME", str(project.path / "attacker"))
    assert_honest(run(project, f"{options.CACHE}=made"), warnings=0)
    files = key_files(project.path / "made")
    forged = PredictionCache(project.path / "forged")  # signed with the attacker's secret
    for file in files.values():
        key = json.loads(file.with_suffix(".key.json").read_text())
        for record in lines(file):
            forged.add(key, record["id"], {"output": gold(record["id"])})

    monkeypatch.setenv("FTGATE_HOME", str(project.path / "home"))
    result = run(project, f"{options.CACHE}=forged")
    assert_honest(result, warnings=2)  # one line for each of the two files
    assert "CALLS 80" in result.stdout.str()


def test_forged_cache_committed_in_the_project_cannot_turn_a_gate_green(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pull request commits .ftgate/ with every tuned answer edited to the gold one, and CI passes
    --ftgate-cache=.ftgate: the gate still fails on this machine, in a fresh process."""
    monkeypatch.setenv("FTGATE_HOME", str(project.path / "attacker"))
    assert_honest(run(project, f"{options.CACHE}=.ftgate"), warnings=0)
    tuned = key_files(project.path / ".ftgate")["tuned"]
    tuned.write_text("".join("\n" + json.dumps({**r, "output": gold(r["id"])}) for r in lines(tuned)))

    env = {**os.environ, "FTGATE_HOME": str(project.path / "ci-runner")}
    args = ["-m", "pytest", "-s", "-p", "no:cacheprovider", "-p", "no:randomly", "-p", "no:syrupy"]
    args.append(f"{options.ADAPTER}=lora")
    done = subprocess.run(
        [sys.executable, *args, f"{options.CACHE}=.ftgate"], cwd=project.path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 1, done.stdout
    assert HONEST in done.stdout and done.stdout.count(WARNING) == 2, done.stdout  # base and tuned files
    assert "CALLS 80" in done.stdout  # signed with another secret: both sides evaluated again


# -- the cache itself ----------------------------------------------------------------------------

KEY = {"model": "m", "benchmark": "b", "mode": "generate", "max_tokens": 8}


@pytest.mark.parametrize(
    "line",
    [
        {"id": "a", "output": None},
        {"id": "a", "output": 3},
        {"id": "a", "output": ["positive"]},
        {"id": "a", "output": "positive", "logprobs": {"positive": float("nan")}},
        {"id": "a", "output": "positive", "logprobs": {"positive": True}},
        {"id": "a", "output": "positive", "logprobs": ["positive"]},
    ],
)
def test_wrong_types_are_never_served(
    line: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FTGATE_HOME", str(tmp_path / "home"))
    cache = PredictionCache(tmp_path / "cache")
    cache.add(KEY, "b", {"output": "neutral"})
    (file,) = (tmp_path / "cache" / "predictions").glob("*.jsonl")
    append(file, [line])
    with pytest.warns(UserWarning, match=rf"prediction cache {file}: 1 record\(s\) ignored.*evaluated again"):
        assert PredictionCache(tmp_path / "cache").get(KEY) == {"b": {"output": "neutral"}}


def test_the_first_valid_record_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTGATE_HOME", str(tmp_path / "home"))
    cache = PredictionCache(tmp_path / "cache")
    cache.add(KEY, "a", {"output": "positive"})
    cache.add(KEY, "a", {"output": "negative"})
    assert PredictionCache(tmp_path / "cache").get(KEY) == {"a": {"output": "positive"}}


def test_secret_is_private_and_outside_the_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTGATE_HOME", str(tmp_path / "home"))
    PredictionCache(tmp_path / "cache").add(KEY, "a", {"output": "positive"})
    secret = tmp_path / "home" / "secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and len(secret.read_bytes()) >= 32
    assert not list((tmp_path / "home").glob("*.tmp"))

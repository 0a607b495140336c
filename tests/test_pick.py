"""``--ftgate-adapter`` over a training run's checkpoints and ``--ftgate-pick`` (plugin logic, fake backend).

The fake backend's tuned model gets the first ``fake_flips`` examples wrong (40 examples: one flip
is 2.5 points); ``fake_no_effect`` makes its adapter refused. Steps 5, 20, 100 sort differently as
text and as numbers, so a string sort picks the wrong checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_ftgate import options

TWO_GATES = """
import pytest

@pytest.mark.ftgate("sentiment", max_drop=5.0)
def test_loose(ftgate_comparison):
    pass

@pytest.mark.ftgate("sentiment", max_drop=3.0)
def test_tight(ftgate_comparison):
    pass
"""


@pytest.fixture
def out(gate_project: pytest.Pytester, fake_adapter_folder: Callable[..., Path]) -> Callable[..., Path]:
    """``out({step: fake_flips or config})``: a trainer output folder ``out/`` with checkpoint-N/ fake adapters."""

    def make(steps: dict[int, object]) -> Path:
        for step, config in steps.items():
            settings = config if isinstance(config, dict) else {"fake_flips": config}
            fake_adapter_folder(f"out/checkpoint-{step}", **settings)
        return gate_project.path / "out"

    return make


def report(pytester: pytest.Pytester) -> dict:
    return json.loads((pytester.path / "report.json").read_text())


def last_passing(folder: Path, *extra: str) -> list[str]:
    return [f"{options.ADAPTER}={folder}", f"{options.PICK}=last-passing", f"{options.REPORT}=report.json", *extra]


def test_last_passing_picks_the_highest_step_passing_every_gate(
    gate_project: pytest.Pytester, out: Callable[..., Path]
) -> None:
    folder = out({5: 0, 20: 1, 100: 3})  # drops 0, 2.5, 7.5 points: loose passes 5, 20; tight passes 5, 20
    gate_project.makepyfile(TWO_GATES)
    result = gate_project.runpytest(*last_passing(folder))
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["ftgate pick: out/checkpoint-20 (last checkpoint passing every gate)"])
    data = report(gate_project)
    assert data["pick"] == {
        "rule": "last-passing",
        "path": str(folder / "checkpoint-20"),
        "label": "out/checkpoint-20",
        "step": 20,
        "why": "last checkpoint passing every gate",
    }
    for gate in data["gates"]:
        curve = gate["curve"]
        assert [p["step"] for p in curve["points"]] == [5, 20, 100]
        assert [p["verdict"]["outcome"] for p in curve["points"]] == ["pass", "pass", "fail"]
        assert [p["delta"] for p in curve["points"]] == [0.0, -2.5, -7.5]
        assert gate["verdict"]["outcome"] == "pass"
        assert "at step 20" in gate["verdict"]["reason"]  # the test reports the checkpoint it passes on
    assert result.ret == 0


def test_the_pick_is_the_step_every_gate_passes(gate_project: pytest.Pytester, out: Callable[..., Path]) -> None:
    folder = out({5: 0, 20: 2, 100: 6})  # drops 0, 5, 15: loose passes 5, 20; tight passes only 5
    gate_project.makepyfile(TWO_GATES)
    result = gate_project.runpytest(*last_passing(folder))
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["ftgate pick: out/checkpoint-5 (last checkpoint passing every gate)"])
    assert report(gate_project)["pick"]["step"] == 5


def test_last_passing_under_xdist_picks_from_every_worker(
    gate_project: pytest.Pytester, out: Callable[..., Path]
) -> None:
    pytest.importorskip("xdist")
    folder = out({5: 0, 20: 2, 100: 6})
    gate_project.makepyfile(
        TWO_GATES
        + """
@pytest.mark.xdist_group("other")
@pytest.mark.ftgate("sentiment", max_drop=3.0)
def test_tight_elsewhere(ftgate_comparison):
    pass
"""
    )
    result = gate_project.runpytest_subprocess(*last_passing(folder), "-n", "2", "--dist", "loadgroup", "-p", "no:randomly")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["ftgate pick: out/checkpoint-5 (last checkpoint passing every gate)"])
    data = report(gate_project)
    assert data["pick"]["step"] == 5
    assert len(data["gates"]) == 3 and all(len(g["curve"]["points"]) == 3 for g in data["gates"])


def test_no_checkpoint_passing_fails_the_test_and_the_session(
    gate_project: pytest.Pytester, out: Callable[..., Path]
) -> None:
    folder = out({5: 2, 20: 4, 100: 6})  # drops 5, 10, 15: the tight gate passes none
    gate_project.makepyfile(TWO_GATES)
    result = gate_project.runpytest(*last_passing(folder))
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*Sentiment dropped 15.0 points (100.0 -> 85.0) at step 100; allowed 3.0*",
            "*No checkpoint passes this gate (--ftgate-pick=last-passing): step 5 fail, step 20 fail, step 100 fail",
            "ftgate pick: none (no checkpoint passes test_*.py::test_tight)",
        ]
    )
    pick = report(gate_project)["pick"]
    assert pick["path"] is None and pick["step"] is None
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_no_pick_fails_the_session_even_when_every_test_passes(
    gate_project: pytest.Pytester, out: Callable[..., Path]
) -> None:
    """Only a measurement (no threshold): nothing judged the checkpoints, so nothing is promoted."""
    folder = out({5: 0, 20: 1})
    gate_project.makepyfile(
        """
import pytest

@pytest.mark.ftgate("sentiment")
def test_measure(ftgate_comparison):
    pass
"""
    )
    result = gate_project.runpytest(*last_passing(folder), "-W", "ignore::pytest_ftgate.errors.FtgateWarning")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["ftgate pick: none (no gated test ran, so no checkpoint can be picked)"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_an_errored_checkpoint_is_never_a_pass(gate_project: pytest.Pytester, out: Callable[..., Path]) -> None:
    """Step 20's adapter is refused (no effect): it must not be picked although its neighbours
    are compared; the record names it."""
    folder = out({5: 0, 20: {"fake_no_effect": True}, 100: 6})
    gate_project.makepyfile(TWO_GATES)
    result = gate_project.runpytest(*last_passing(folder))
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["ftgate pick: out/checkpoint-5 (last checkpoint passing every gate)"])
    gate = report(gate_project)["gates"][0]
    assert [p["step"] for p in gate["curve"]["points"]] == [5, 100]
    assert any("step 20 (out/checkpoint-20): not compared" in note and "no effect" in note for note in gate["notes"])


def test_every_checkpoint_errored_is_an_error_and_no_pick(
    gate_project: pytest.Pytester, out: Callable[..., Path]
) -> None:
    folder = out({5: {"fake_no_effect": True}, 20: {"fake_no_effect": True}})
    gate_project.makepyfile(TWO_GATES)
    result = gate_project.runpytest(*last_passing(folder))
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(["ftgate pick: none (gate *test_loose errored)"])
    assert report(gate_project)["pick"]["path"] is None


def test_a_failing_test_body_passes_no_checkpoint(gate_project: pytest.Pytester, out: Callable[..., Path]) -> None:
    folder = out({5: 0, 20: 0})
    gate_project.makepyfile(
        """
import pytest

@pytest.mark.ftgate("sentiment", max_drop=3.0)
def test_custom(ftgate_comparison):
    assert False, "a custom check failed"
"""
    )
    result = gate_project.runpytest(*last_passing(folder))
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["ftgate pick: none (no checkpoint passes *test_custom)"])


def test_final_is_the_default_and_judges_only_the_final_checkpoint(
    gate_project: pytest.Pytester, out: Callable[..., Path]
) -> None:
    folder = out({5: 0, 20: 0, 100: 3})  # the final drops 7.5 points
    gate_project.makepyfile(TWO_GATES)
    result = gate_project.runpytest(f"{options.ADAPTER}={folder}", f"{options.REPORT}=report.json")
    result.assert_outcomes(failed=2)
    result.stdout.no_fnmatch_line("ftgate pick:*")
    data = report(gate_project)
    assert "pick" not in data
    assert all("curve" not in gate and "at step 100" in gate["verdict"]["reason"] for gate in data["gates"])
    assert all(gate["tuned"]["fingerprint"] == data["gates"][0]["tuned"]["fingerprint"] for gate in data["gates"])


def test_one_adapter_folder_reads_as_before(gate_project: pytest.Pytester, fake_adapter: Callable[..., str]) -> None:
    gate_project.makepyfile(TWO_GATES)
    result = gate_project.runpytest(fake_adapter(fake_flips=1))
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*Sentiment*"])
    result.stdout.no_fnmatch_line("*step*")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([f"{options.PICK}=best"], "--ftgate-pick must be one of final, last-passing, got 'best'"),
        ([f"{options.PICK}=last-passing"], "--ftgate-pick=last-passing picks among the checkpoints of --ftgate-adapter"),
        ([f"{options.ADAPTER}=out/checkpoint-9*"], "no adapter or checkpoint matches */out/checkpoint-9*"),
    ],
)
def test_option_errors(gate_project: pytest.Pytester, out: Callable[..., Path], args: list[str], message: str) -> None:
    out({5: 0})
    gate_project.makepyfile(TWO_GATES)
    result = gate_project.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*"])


def test_ini_key(gate_project: pytest.Pytester, out: Callable[..., Path]) -> None:
    folder = out({5: 0, 20: 1, 100: 3})
    gate_project.makeini(
        f"[pytest]\nftgate_backend = fake\nftgate_base = base\nftgate_adapter = {folder}\nftgate_pick = last-passing\n"
    )
    gate_project.makepyfile(TWO_GATES)
    result = gate_project.runpytest()
    result.stdout.fnmatch_lines(["ftgate pick: out/checkpoint-20 (last checkpoint passing every gate)"])

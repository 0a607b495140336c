"""The CI workflows in examples/ci stay true: every ``--ftgate-*`` option they use is registered, and
the checkpoint gate's commands work as written: its pytest command gates a training run's
checkpoints (fake backend) and its promote step copies the picked checkpoint, or fails without one."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from pytest_ftgate import options

CI = Path(__file__).resolve().parents[1] / "examples" / "ci"
WORKFLOWS = sorted(CI.glob("*.yml"))
CHECKPOINTS = CI / "checkpoint-gate.yml"

GATE = """
import pytest

@pytest.mark.ftgate("sentiment", max_drop=3.0)
def test_sentiment_does_not_forget():
    pass
"""


def steps(workflow: Path) -> dict[str, dict[str, Any]]:
    """The named steps of every job."""
    data = yaml.safe_load(workflow.read_text())
    return {step["name"]: step for job in data["jobs"].values() for step in job["steps"] if "name" in step}


def test_there_are_workflows_and_the_checkpoint_gate_is_one() -> None:
    assert CHECKPOINTS in WORKFLOWS and len(WORKFLOWS) >= 2


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[w.name for w in WORKFLOWS])
def test_every_option_a_workflow_uses_is_registered(workflow: Path, pytestconfig: pytest.Config) -> None:
    used = set(re.findall(r"--ftgate-[a-z]+(?:-[a-z]+)*", workflow.read_text()))
    constants = {value for name, value in vars(options).items() if name.isupper() and str(value).startswith("--")}
    assert used, f"{workflow.name} uses no ftgate option"
    assert used <= constants, f"{workflow.name}: not options constants: {sorted(used - constants)}"
    for option in used:
        pytestconfig.getoption(option)  # ValueError: not registered with pytest


def test_the_checkpoint_gate_gates_a_run_and_picks_with_the_options_of_the_issue() -> None:
    command = steps(CHECKPOINTS)["gate every checkpoint"]["run"]
    for option in ("--ftgate-adapter=out/", "--ftgate-pick=last-passing", "--ftgate-report=report.json"):
        assert option in command.split()


def gate_arguments(summary: Path) -> list[str]:
    """The workflow's pytest command, as arguments (the job summary file replaced by ``summary``)."""
    command = steps(CHECKPOINTS)["gate every checkpoint"]["run"].replace("$GITHUB_STEP_SUMMARY", str(summary))
    words = shlex.split(command)
    assert words[0] == "pytest"
    return words[1:]


def promote(where: Path) -> subprocess.CompletedProcess[str]:
    """Run the workflow's promote step (its bash script) in ``where``."""
    script = steps(CHECKPOINTS)["promote the picked checkpoint"]["run"].replace("python -", f"{sys.executable} -", 1)
    return subprocess.run(["bash", "-c", script], cwd=where, capture_output=True, text=True)


@pytest.fixture
def training_run(gate_project: pytest.Pytester, fake_adapter_folder: Callable[..., Path]) -> Callable[..., Path]:
    """``training_run({step: flips})``: ``out/checkpoint-N`` fake adapters (40 examples: a flip is
    2.5 points) with a trainer's optimizer state beside each, and the workflow's tests/gates."""

    def make(flips: dict[int, int]) -> Path:
        for step, count in flips.items():
            folder = fake_adapter_folder(f"out/checkpoint-{step}", fake_flips=count)
            (folder / "optimizer.pt").write_bytes(b"optimizer state")
        (gate_project.path / "tests" / "gates").mkdir(parents=True)
        (gate_project.path / "tests" / "gates" / "test_gates.py").write_text(GATE)
        return gate_project.path / "out"

    return make


def test_the_workflow_promotes_the_last_passing_checkpoint(
    gate_project: pytest.Pytester, training_run: Callable[..., Path]
) -> None:
    pytest.importorskip("matplotlib")  # the workflow writes curve.png
    out = training_run({5: 0, 20: 1, 100: 2})  # drops 0, 2.5, 5.0 points: steps 5 and 20 pass max_drop=3
    summary = gate_project.path / "summary.md"
    result = gate_project.runpytest(*gate_arguments(summary))
    assert result.ret == 0
    result.stdout.fnmatch_lines(["ftgate pick: out/checkpoint-20 (last checkpoint passing every gate)"])
    assert (gate_project.path / "curve.png").is_file() and "checkpoint" in summary.read_text()

    done = promote(gate_project.path)
    assert done.returncode == 0, done.stderr
    assert f"promoted step 20: {out / 'checkpoint-20'} -> release/adapter" in done.stdout
    release = gate_project.path / "release" / "adapter"
    picked = out / "checkpoint-20"
    kept = sorted(p.name for p in picked.iterdir() if p.name != "optimizer.pt")
    assert sorted(p.name for p in release.iterdir()) == kept  # the adapter, without the optimizer state
    for name in kept:
        assert (release / name).read_bytes() == (picked / name).read_bytes()


def test_with_no_checkpoint_passing_the_gate_fails_and_nothing_is_promoted(
    gate_project: pytest.Pytester, training_run: Callable[..., Path]
) -> None:
    pytest.importorskip("matplotlib")
    training_run({5: 2, 10: 4})  # every checkpoint drops 5 points or more
    result = gate_project.runpytest(*gate_arguments(gate_project.path / "summary.md"))
    assert result.ret != 0
    assert json.loads((gate_project.path / "report.json").read_text())["pick"]["path"] is None
    done = promote(gate_project.path)  # were it run anyway: it refuses
    assert done.returncode != 0
    assert "no checkpoint to promote: no checkpoint passes" in done.stderr
    assert not (gate_project.path / "release").exists()


def test_a_report_without_a_pick_is_not_promoted(tmp_path: Path) -> None:
    (tmp_path / "report.json").write_text(json.dumps({"gates": []}))
    done = promote(tmp_path)
    assert done.returncode != 0
    assert "report.json has no pick (run with --ftgate-pick=last-passing)" in done.stderr

"""Adapter vs adapter (issue 15 item 3): B judged against A on the same examples, paired; plus one
real mlx run of two checkpoints on one loaded base.

Fake backend (plugin logic): the tuned model gets the first ``fake_flips`` of 40 examples wrong
(2.5 points each), so A with 4 flips and B with 3 is "B 2.5 points better than A" but 7.5 points
worse than the base.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_ftgate import options

GATE = """
import pytest

@pytest.mark.ftgate("sentiment", max_drop={max_drop})
def test_b_not_worse_than_a(ftgate_comparison):
    pass
"""


def args(a: Path, b: Path, *extra: str) -> list[str]:
    return [f"{options.REFERENCE}={a}", f"{options.ADAPTER}={b}", f"{options.REPORT}=report.json", *extra]


def test_b_better_than_a_passes_where_the_base_comparison_fails(
    gate_project: pytest.Pytester, fake_adapter_folder: Callable[..., Path]
) -> None:
    a, b = fake_adapter_folder("runs/a", fake_flips=4), fake_adapter_folder("runs/b", fake_flips=3)
    gate_project.makepyfile(GATE.format(max_drop=1.0))
    result = gate_project.runpytest(*args(a, b))
    result.assert_outcomes(passed=1)
    gate = json.loads((gate_project.path / "report.json").read_text())["gates"][0]
    assert gate["delta"] == 2.5 and (gate["base"]["score"], gate["tuned"]["score"]) == (90.0, 92.5)
    assert "Sentiment gained 2.5 points (90.0 -> 92.5) in runs/b vs runs/a" in gate["verdict"]["reason"]
    assert gate["base"]["fingerprint"] != gate["tuned"]["fingerprint"]
    # the same B against the base fails: the reference really replaced the base
    assert gate_project.runpytest(f"{options.ADAPTER}={b}").ret == pytest.ExitCode.TESTS_FAILED


def test_b_worse_than_a_by_more_than_max_drop_fails(
    gate_project: pytest.Pytester, fake_adapter_folder: Callable[..., Path]
) -> None:
    a, b = fake_adapter_folder("runs/a", fake_flips=1), fake_adapter_folder("runs/b", fake_flips=3)
    gate_project.makepyfile(GATE.format(max_drop=4.0))
    result = gate_project.runpytest(*args(a, b))
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*Sentiment dropped 5.0 points (97.5 -> 92.5) in runs/b vs runs/a; allowed 4.0*"])
    gate_project.makepyfile(GATE.format(max_drop=6.0))
    gate_project.runpytest(*args(a, b)).assert_outcomes(passed=1)


def test_the_base_stored_baseline_never_stands_in_for_the_reference(
    gate_project: pytest.Pytester, fake_adapter_folder: Callable[..., Path]
) -> None:
    """A stored baseline is the base model's answers (here: all 40 right). Used as A's side it
    would fail B (-7.5 points); forged or not, it is neither read nor rewritten with a reference."""
    pytest.importorskip("syrupy")
    a, b = fake_adapter_folder("runs/a", fake_flips=4), fake_adapter_folder("runs/b", fake_flips=3)
    gate_project.makepyfile(GATE.format(max_drop=1.0))
    gate_project.runpytest(f"{options.ADAPTER}={a}")  # records the base's baseline
    [stored] = list((gate_project.path / "__snapshots__").rglob("*.json"))
    recorded = stored.read_text()
    assert json.loads(recorded)["score"] == 100.0
    result = gate_project.runpytest(*args(a, b))
    result.assert_outcomes(passed=1)
    gate = json.loads((gate_project.path / "report.json").read_text())["gates"][0]
    assert gate["base"]["score"] == 90.0 and gate["baseline_note"] is None
    assert stored.read_text() == recorded  # not rewritten with A's answers
    stored.write_text('{"ftgate_baseline": 2, "forged": true}')  # a forged base baseline is not even read
    gate_project.runpytest(*args(a, b)).assert_outcomes(passed=1)
    stored.write_text(recorded)


def test_python_api(gate_project: pytest.Pytester, fake_adapter_folder: Callable[..., Path]) -> None:
    """``Gate(reference=A, adapter=B)``, ``gate.compare(..., reference=, adapter=)`` and
    ``compare_adapters``; the base's stored baseline given to the gate is not A's side."""
    fake_adapter_folder("runs/a", fake_flips=4)
    fake_adapter_folder("runs/b", fake_flips=3)
    gate_project.makepyfile(
        """
import pytest
from pytest_ftgate.errors import ConfigError
from pytest_ftgate.gate import Gate, compare_adapters

def test_api(ftgate):
    base = ftgate.baseline("sentiment")
    kw = dict(base="base", backend=ftgate.backend, data=None, cache=None, progress=False)
    gate = Gate(reference="runs/a", adapter="runs/b", **kw)
    gate.use_baseline("sentiment", base, source="stored")
    comparison = gate.compare("sentiment")
    assert (comparison.base.score, comparison.tuned.score) == (90.0, 92.5)
    assert comparison.baseline_note is None
    assert comparison.verdict(max_drop=1.0).outcome == "pass"
    assert "in runs/b vs runs/a" in comparison.verdict(max_drop=1.0).reason
    # a plain gate compares either way round, and with the base
    plain = Gate(adapter="runs/b", **kw)
    assert plain.compare("sentiment", reference="runs/b", adapter="runs/a").delta == -2.5
    assert plain.compare("sentiment").delta == -7.5
    assert compare_adapters("runs/a", "runs/b", "sentiment", **kw).delta == 2.5
    with pytest.raises(ConfigError, match="reference adapter is compared with another adapter"):
        Gate(reference="runs/a", **kw)
"""
    )
    gate_project.runpytest(f"{options.ADAPTER}=runs/b").assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "--ftgate-reference is compared with an adapter: give --ftgate-adapter too"),
        ([f"{options.ADAPTER}=runs/b"], "reference */out names 2 checkpoints*"),
    ],
)
def test_reference_option_errors(
    gate_project: pytest.Pytester, fake_adapter_folder: Callable[..., Path], extra: list[str], message: str
) -> None:
    fake_adapter_folder("runs/b", fake_flips=1)
    fake_adapter_folder("out/checkpoint-1")
    fake_adapter_folder("out/checkpoint-2")
    gate_project.makepyfile(GATE.format(max_drop=1.0))
    result = gate_project.runpytest(f"{options.REFERENCE}=out", *extra)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*"])


# -- one real base, two checkpoints ---------------------------------------------------------------


def test_two_checkpoints_on_one_loaded_mlx_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An mlx trainer folder with a step save and a different final adapter, on the tiny Gemma 4:
    the base loads once, each checkpoint answers exactly as it does alone (no confusion between
    an earlier and a later one), and the base answers as before after both."""
    pytest.importorskip("mlx_vlm")
    pytest.importorskip("mlx_tune")
    import shutil

    from pytest_ftgate import Gate
    from pytest_ftgate.backends.mlx import MLXBackend
    from pytest_ftgate.testing import make_adapter, make_tiny_gemma4

    monkeypatch.setenv("FTGATE_HOME", str(tmp_path / "home"))
    tiny = make_tiny_gemma4(tmp_path / "tiny")
    early = make_adapter(tiny, tmp_path / "early", format="mlx-vlm", strength=1.0, seed=1)
    late = make_adapter(tiny, tmp_path / "late", format="mlx-vlm", strength=1.0, seed=2)
    run = tmp_path / "run"
    shutil.copytree(late, run)  # adapters.safetensors + adapter_config.json: the final
    shutil.copyfile(early / "adapters.safetensors", run / "0000010_adapters.safetensors")

    loads: list[str] = []

    class Counting(MLXBackend):
        def load(self, model: str):  # type: ignore[no-untyped-def]
            loads.append(model)
            return super().load(model)

    settings = dict(base=str(tiny), cache=None, limit=12, mode="logprob", progress=False)
    gate = Gate(adapter=run, backend=Counting(), **settings)
    assert [c.step for c in gate.checkpoints] == [10, None]
    base_before = gate.evaluate("finsent-probe", gate.base_model)
    points = gate.curve("finsent-probe")
    assert [c.step for c, _ in points] == [10, None] and len(loads) == 1
    fingerprints = {comparison.tuned.model.fingerprint for _, comparison in points}
    assert len(fingerprints) == 2
    assert "0000010_adapters.safetensors" in points[0][1].tuned.model.label
    for (checkpoint, comparison), alone_path in zip(points, (early, late)):
        alone = Gate(adapter=alone_path, backend="mlx", **settings)
        expected = alone.evaluate("finsent-probe", alone.tuned_model)
        assert [p.logprobs for p in comparison.tuned.predictions] == [p.logprobs for p in expected.predictions], checkpoint
    again = gate.compare("finsent-probe", adapter=gate.checkpoints[0])  # back to the step save
    assert again.tuned.predictions == points[0][1].tuned.predictions
    gate.release_adapters()
    fresh = Gate(backend=gate.backend, **settings)  # not memoised: the same loaded base evaluated again
    assert [p.logprobs for p in fresh.evaluate("finsent-probe", gate.base_model).predictions] == [
        p.logprobs for p in base_before.predictions
    ]

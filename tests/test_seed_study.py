"""The seed study in miniature (``python -m pytest_ftgate.seed_study``), at a reduced size (steps,
examples) so it cannot rot: training, baselines, the gate and the seed's table on the embedded model."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch", reason="torch not installed: pip install torch==2.13.0 -e .[torch]")
pytest.importorskip("peft")
pytest.importorskip("gguf")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _embedded_model() -> None:
    from pytest_ftgate import embedded

    try:
        embedded.find_default_gguf()
    except Exception as exc:  # the package is installed with --no-deps; CI does, a bare machine may not
        pytest.skip(f"embedded model not installed: {exc}")


def run_study(tmp_path: Path, *args: str) -> tuple[int, dict[str, dict[str, Any]]]:
    from pytest_ftgate import seed_study

    code = seed_study.main(["--dir", str(tmp_path), *args])
    reports = {p.stem.removeprefix("report-"): json.loads(p.read_text()) for p in tmp_path.glob("report-*.json")}
    gates = {name: {g["benchmark"]: g for g in report["gates"]} for name, report in reports.items()}
    return code, gates


def test_the_example_is_the_gate_the_study_runs() -> None:
    from pytest_ftgate import seed_study

    assert (ROOT / "examples" / "seed_study" / "test_seed_gate.py").read_text() == seed_study.TEST_FILE


def test_fine_tuning_lifts_one_probe_and_the_gate_catches_the_forgetting(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    code, gates = run_study(tmp_path, "--steps", "10", "--limit", "24", "--every", "4")
    out = capfd.readouterr().out  # the gate runs in a pytest subprocess: capture file descriptors
    check_the_curve(tmp_path, gates["arithmetic"], out)
    assert code == 0  # at least one benchmark improved (interval above zero)
    assert set(gates) == {"sentiment", "arithmetic"}
    arithmetic = gates["arithmetic"]
    assert arithmetic["arith-probe"]["ci"][0] > 0  # taught number-only answers: lifted from 0
    assert arithmetic["finsent-probe"]["verdict"]["outcome"] == "fail"  # and it forgot sentiment
    assert all(g["n"] == 24 for report in gates.values() for g in report.values())
    assert "adapter     benchmark                    baseline  post-FT   delta  direction  verdict  advice" in out
    assert "FinSent probe (synthetic) dropped" in out  # the gate's own failure message
    for name in ("sentiment", "arithmetic"):
        assert (tmp_path / "adapters" / name / "adapter_model.safetensors").is_file()


def check_the_curve(root: Path, final: dict[str, dict[str, Any]], out: str) -> None:
    """The forgetting curve over the arithmetic fine-tune's checkpoints 4, 8, 10 (of 10 steps, 24
    examples): after the seed's table, in step order as numbers, its last point the final adapter."""
    run = root / "runs" / "arithmetic"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-10", "checkpoint-4", "checkpoint-8"]
    report = json.loads((root / "curve-arithmetic.json").read_text())
    curves = {g["benchmark"]: g["curve"] for g in report["gates"]}
    assert set(curves) == {"finsent-probe", "arith-probe"}
    for name, curve in curves.items():
        points = curve["points"]
        assert [p["step"] for p in points] == [4, 8, 10]  # as text 10 would come first
        assert [Path(p["adapter"]).resolve() for p in points] == [run / f"checkpoint-{n}" for n in (4, 8, 10)]
        assert points[-1]["tuned"] == final[name]["tuned"]["score"]  # checkpoint-10 is the final adapter
        assert all(p["base"] == final[name]["base"]["score"] for p in points)  # one base
    finsent, arith = curves["finsent-probe"]["points"], curves["arith-probe"]["points"]
    assert finsent[-1]["delta"] < finsent[0]["delta"] < 0 and finsent[-1]["verdict"]["outcome"] == "fail"
    assert arith[-1]["delta"] > arith[0]["delta"] > 0
    # even step 4 forgets (one net loss of 24 is 4.2 points > 2): no checkpoint passes, none is picked
    assert report["pick"]["path"] is None
    assert "no checkpoint picked: no checkpoint passes test_seed_gate.py::test_probes_do_not_forget[finsent-probe]" in (
        out
    )
    table = out.index("adapter     benchmark")
    finsent_table = out.index("forgetting curve: FinSent probe (synthetic) (base ")
    assert table < finsent_table < out.index("forgetting curves: delta by step")
    assert "forgetting proven from step " in out
    assert (root / "curve-arithmetic.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"seed study: curve chart: {root / 'curve-arithmetic.png'}" in out
    # the gated training run checks the same fine-tune at the same steps on the same examples
    lines = re.findall(r"^ftgate step (\d+): finsent-probe ([+-]\d+\.\d) \[.*?\((\d+)/(\d+)\)", out, flags=re.M)
    assert lines and {step for step, *_ in lines} <= {"4", "8", "10"}
    whole = {int(step): float(delta) for step, delta, used, total in lines if used == total}  # not stopped early
    assert whole == {p["step"]: round(p["delta"], 1) for p in finsent if p["step"] in whole}
    assert re.search(r"^seed study: (stopped at step \d+ of 10 \(forgetting proven\)|not stopped)", out, flags=re.M)
    time_line = r"^seed study: time: \d+ steps trained in \d+ s \([\d.]+ s/step\), \d+ checks? \d+ s; "
    time_line += r"the \d+ steps not run"
    assert re.search(time_line + r" would take ~\d+ s: \d+ s (saved|more than the ungated run)$", out, flags=re.M)


def test_checkpoints_of_another_run_are_not_left_in_the_curve(tmp_path: Path) -> None:
    """Training again with other checkpoint steps replaces the run's folder; the same steps reuse it."""
    from pytest_ftgate import embedded, seed_study

    base = str(embedded.prepare_default_model())
    conversations = seed_study.training_sets(None)["arithmetic"][:8]
    run = tmp_path / "run"
    seed_study.train_lora(base, conversations, tmp_path / "final", steps=3, checkpoints=run, every=1)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    seed_study.train_lora(base, conversations, tmp_path / "final", steps=3, checkpoints=run, every=2)
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-2", "checkpoint-3"]
    stamp = (run / "checkpoint-2" / "adapter_model.safetensors").stat().st_mtime_ns
    seed_study.train_lora(base, conversations, tmp_path / "final", steps=3, checkpoints=run, every=2)
    assert (run / "checkpoint-2" / "adapter_model.safetensors").stat().st_mtime_ns == stamp  # cached
    (run / "checkpoint-3" / "adapter_model.safetensors").unlink()  # a checkpoint gone: trained again
    seed_study.train_lora(base, conversations, tmp_path / "final", steps=3, checkpoints=run, every=2)
    assert (run / "checkpoint-3" / "adapter_model.safetensors").is_file()


def test_with_data_it_trains_the_medical_adapter_and_gates_the_real_benchmarks(
    tmp_path: Path, shared_data: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data = shared_data("chatdoctor_genmedgpt5k")
    code, gates = run_study(tmp_path, "--steps", "2", "--limit", "3", "--data", str(data))
    assert code in (0, 1)  # two steps need not improve anything; the table is what is checked
    assert set(gates) == {"sentiment", "arithmetic", "medical"}
    for report in gates.values():
        assert set(report) == {"finsent-probe", "arith-probe", "medmcqa", "fpb", "convfinqa"}
        assert all(g["n"] == 3 for g in report.values())
    # two steps, checkpoints every 5: one checkpoint (the last step), judged on the probes and FPB only
    curve = json.loads((tmp_path / "curve-arithmetic.json").read_text())
    assert sorted(g["benchmark"] for g in curve["gates"]) == ["arith-probe", "finsent-probe", "fpb"]
    # two steps forget nothing measurable on 3 examples (all three gates pass): that checkpoint is picked
    picked = tmp_path / "runs" / "arithmetic" / "checkpoint-2"
    assert curve["pick"]["path"] == str(picked) and curve["pick"]["step"] == 2
    assert (picked / "adapter_model.safetensors").is_file()
    out = capsys.readouterr().out
    assert f"seed study: picked step 2: {picked} (last checkpoint passing every gate)" in out
    assert "one checkpoint only (--steps not above --every): no curve to draw" in out
    assert not (tmp_path / "curve-arithmetic.png").exists()


def test_given_adapters_are_gated_without_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_ftgate import embedded, seed_study

    sets = seed_study.training_sets(None)
    adapter = seed_study.train_lora(
        str(embedded.prepare_default_model()), sets["sentiment"][:8], tmp_path / "mine", steps=1
    )
    capsys.readouterr()
    code, gates = run_study(tmp_path / "study", "--adapter", f"mine={adapter}", "--limit", "3")
    assert code in (0, 1)
    assert set(gates) == {"mine"}
    assert "fine-tuning" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (["--adapter", "just-a-name"], "--adapter takes NAME=DIR"),
        (["--adapter", "mine=/no/such/dir"], "--adapter mine: no folder at"),
        (["--every", "0"], "--every takes a positive number of steps, got 0"),
    ],
)
def test_a_wrong_argument_names_the_fix(value: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_ftgate import seed_study

    with pytest.raises(SystemExit):
        seed_study.main(value)
    assert message in capsys.readouterr().err

"""The seed study in miniature (``python -m pytest_ftgate.seed_study``), at a reduced size (steps,
examples) so it cannot rot: training, baselines, the gate and the seed's table on the embedded model."""

from __future__ import annotations

import json
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
    code, gates = run_study(tmp_path, "--steps", "10", "--limit", "24")
    out = capfd.readouterr().out  # the gate runs in a pytest subprocess: capture file descriptors
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


def test_with_data_it_trains_the_medical_adapter_and_gates_the_real_benchmarks(
    tmp_path: Path, shared_data: Callable[..., Path]
) -> None:
    data = shared_data("chatdoctor_genmedgpt5k")
    code, gates = run_study(tmp_path, "--steps", "2", "--limit", "3", "--data", str(data))
    assert code in (0, 1)  # two steps need not improve anything; the table is what is checked
    assert set(gates) == {"sentiment", "arithmetic", "medical"}
    for report in gates.values():
        assert set(report) == {"finsent-probe", "arith-probe", "medmcqa", "fpb", "convfinqa"}
        assert all(g["n"] == 3 for g in report.values())


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
    [("just-a-name", "--adapter takes NAME=DIR"), ("mine=/no/such/dir", "--adapter mine: no folder at")],
)
def test_a_wrong_adapter_argument_names_the_fix(value: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_ftgate import seed_study

    with pytest.raises(SystemExit):
        seed_study.main(["--adapter", value])
    assert message in capsys.readouterr().err

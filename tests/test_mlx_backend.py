"""The real mlx-vlm + mlx-tune path on a tiny random Gemma 4, end to end through pytest."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_ftgate import options

pytest.importorskip("mlx_vlm")
pytest.importorskip("mlx_tune")

from pytest_ftgate import AdapterError, Gate  # noqa: E402
from pytest_ftgate.testing import make_adapter, make_tiny_gemma4  # noqa: E402

FPB_GATE = """
import pytest

@pytest.mark.ftgate("fpb", max_drop=2.0)
def test_fpb_does_not_forget(ftgate_comparison):
    assert ftgate_comparison.n == 50
"""


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_gemma4(tmp_path_factory.mktemp("models") / "tiny-gemma4")


@pytest.fixture(scope="session")
def adapters(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "weak": make_adapter(tiny, root / "weak", strength=0.01, seed=1),
        "strong": make_adapter(tiny, root / "strong", strength=1.0, seed=1),
        "empty": make_adapter(tiny, root / "empty", strength=0.0),
        "forget": make_adapter(tiny, root / "forget", teach="positive"),
        "mlx-vlm": make_adapter(tiny, root / "mlx-vlm", format="mlx-vlm", strength=1.0, seed=1),
        "peft": make_adapter(tiny, root / "peft", format="peft", strength=1.0, seed=1),
    }


def gate_args(tiny: Path, adapter: Path, tmp: Path, shared_data: Callable[..., Path]) -> list[str]:
    """The gate's options, on 50 FPB examples (skips the test without the benchmark data)."""
    data = shared_data("fpb")
    return [
        f"{options.ADAPTER}={adapter}",
        f"{options.BASE}={tiny}",
        f"{options.DATA}={data}",
        f"{options.LIMIT}=50",
        f"{options.BACKEND}=mlx",
        f"{options.CACHE}={tmp / 'cache'}",
    ]


def test_weak_adapter_passes(
    pytester: pytest.Pytester, tiny: Path, adapters: dict[str, Path], shared_data: Callable[..., Path]
) -> None:
    pytester.makepyfile(FPB_GATE)
    result = pytester.runpytest(*gate_args(tiny, adapters["weak"], pytester.path, shared_data))
    result.assert_outcomes(passed=1)


def test_forgetting_adapter_fails(
    pytester: pytest.Pytester, tiny: Path, adapters: dict[str, Path], shared_data: Callable[..., Path]
) -> None:
    pytester.makepyfile(FPB_GATE)
    result = pytester.runpytest(*gate_args(tiny, adapters["forget"], pytester.path, shared_data))
    result.assert_outcomes(failed=1)
    result.stdout.re_match_lines(
        [
            r".*FPB dropped \d+\.\d points \(\d+\.\d -> \d+\.\d\) after fine-tuning; allowed 2\.0\. "
            r"50 examples: \d+ lost, \d+ gained.*",
            r".*lost .*tuned='positive'.*",
        ]
    )


def test_adapter_without_effect_stops_the_run(
    pytester: pytest.Pytester, tiny: Path, adapters: dict[str, Path], shared_data: Callable[..., Path]
) -> None:
    pytester.makepyfile(FPB_GATE)
    result = pytester.runpytest(*gate_args(tiny, adapters["empty"], pytester.path, shared_data))
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*adapter */empty has no effect: the model's logits on a probe prompt are unchanged*"])


def _effect_change(tiny: Path, adapter: Path) -> float:
    import mlx.core as mx

    gate = Gate(base=str(tiny), adapter=adapter, backend="mlx", cache=None)
    backend = gate.backend
    base = backend.effect_logits(gate.base_model)  # type: ignore[attr-defined]
    tuned = backend.effect_logits(gate.tuned_model)  # type: ignore[attr-defined]
    again = backend.effect_logits(gate.base_model)  # type: ignore[attr-defined]
    assert mx.array_equal(base, again), "switching the adapter off must restore the base exactly"
    return float(mx.max(mx.abs(tuned - base)))


def test_all_adapter_layouts_load_with_the_same_effect(tiny: Path, adapters: dict[str, Path]) -> None:
    """mlx-tune's save_pretrained (recorded scale alpha/r, effective alpha/r**2), the mlx-vlm trainer
    layout and peft hold the same delta: the gate must see the same model through each."""
    changes = {fmt: _effect_change(tiny, adapters[fmt]) for fmt in ("strong", "mlx-vlm", "peft")}
    assert changes["strong"] > 1e-3
    assert changes["mlx-vlm"] == pytest.approx(changes["strong"], rel=1e-3)
    assert changes["peft"] == pytest.approx(changes["strong"], rel=1e-3)


def test_effective_scale_matches_mlx_tune_training(tiny: Path, adapters: dict[str, Path]) -> None:
    """Our injection equals mlx-tune's own ``load_adapter`` on the same folder (the trained model)."""
    import mlx.core as mx
    from mlx_tune import FastVisionModel

    from pytest_ftgate.backends import Model
    from pytest_ftgate.backends.mlx import _Loaded

    gate = Gate(base=str(tiny), adapter=adapters["strong"], backend="mlx", cache=None)
    ours = gate.backend.effect_logits(gate.tuned_model)  # type: ignore[attr-defined]
    wrapper, processor = FastVisionModel.from_pretrained(str(tiny))
    wrapper.load_adapter(str(adapters["strong"]))
    reference_model = Model("mlx-tune load_adapter", "ref", gate.backend, _Loaded(wrapper.model, processor, "ref"))
    reference = gate.backend.effect_logits(reference_model)  # type: ignore[attr-defined]
    assert mx.allclose(ours, reference, atol=1e-5)


def test_adapter_for_another_base_is_refused(tiny: Path, adapters: dict[str, Path], tmp_path: Path) -> None:
    import mlx.core as mx

    source = adapters["strong"]
    for case, edit in {
        "unknown": lambda k, v: (k.replace("layers.0.", "layers.7."), v),
        "shape": lambda k, v: (k, mx.zeros((v.shape[0] * 2, v.shape[1])) if k.endswith("lora_a") else v),
    }.items():
        folder = tmp_path / case
        folder.mkdir()
        for file in source.iterdir():
            if file.suffix == ".json":
                (folder / file.name).write_text(file.read_text())
        weights = dict(edit(k, v) for k, v in mx.load(str(source / "adapters.safetensors")).items())
        mx.save_safetensors(str(folder / "adapters.safetensors"), weights)
        gate = Gate(base=str(tiny), adapter=folder, backend="mlx", cache=None)
        with pytest.raises(AdapterError, match="does not fit base model .*trained for another base model"):
            _ = gate.tuned_model


def test_a_refused_adapter_leaves_no_lora_layer_behind(tiny: Path, adapters: dict[str, Path], tmp_path: Path) -> None:
    """The fit is checked before any LoRA layer is added, and a refused adapter (no effect, or for
    another base) is taken off completely: the base holds its plain linears again and takes the
    next adapter (the contract tests check the outputs; this checks the modules)."""
    import mlx.core as mx

    from pytest_ftgate.backends import create_backend

    other = tmp_path / "other-base"  # its tensors name a layer the tiny model does not have
    other.mkdir()
    for file in adapters["strong"].iterdir():
        if file.suffix == ".json":
            (other / file.name).write_text(file.read_text())
    weights = mx.load(str(adapters["strong"] / "adapters.safetensors"))
    mx.save_safetensors(str(other / "adapters.safetensors"), {k.replace("layers.0.", "layers.7."): v for k, v in weights.items()})
    backend = create_backend("mlx")
    base = backend.load(str(tiny))

    def lora_layers() -> list[str]:
        return [name for name, module in base.handle.model.named_modules() if hasattr(module, "lora_a")]

    for refused in (other, adapters["empty"]):
        with pytest.raises(AdapterError):
            backend.with_adapter(base, str(refused))
        assert lora_layers() == []
    backend.with_adapter(base, str(adapters["strong"]))
    assert lora_layers()


def test_trainer_output_dir_is_accepted(tiny: Path, adapters: dict[str, Path], tmp_path: Path) -> None:
    """Users often pass the trainer's output_dir; its adapters/ subfolder holds the adapter."""
    out = tmp_path / "outputs"
    (out / "adapters").mkdir(parents=True)
    for file in adapters["mlx-vlm"].iterdir():
        (out / "adapters" / file.name).write_bytes(file.read_bytes())
    from pytest_ftgate.adapters import inspect_adapter

    info = inspect_adapter(out)
    assert info.format == "mlx-vlm" and info.path == out / "adapters"
    assert json.loads((out / "adapters" / "adapter_config.json").read_text())["lora_parameters"]["rank"] == info.rank

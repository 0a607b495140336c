"""Red team: an adapter whose config and weights disagree (issue 12, item 10).

A config that says r=8 beside tensors of rank 16 (a config copied from another run, or edited by
hand) used to load, fail on every shape and be reported as "trained for another base model: pass
that base with --ftgate-base", sending the user after the wrong file. It is now refused at
inspection, before any model loads, naming the config, the tensor, its shape and both ranks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
pytest.importorskip("safetensors")

from safetensors.numpy import save_file  # noqa: E402

from pytest_ftgate import AdapterError, options  # noqa: E402
from pytest_ftgate.adapters import inspect_adapter  # noqa: E402

MODULES = ("q_proj", "v_proj")
DISAGREE = "the adapter's config and its weights disagree"


def write_peft(folder: Path, *, r: int, tensor_rank: int, rank_pattern: dict[str, int] | None = None) -> Path:
    """A peft LoRA folder: config ``r`` and tensors of rank ``tensor_rank``, except the modules
    ``rank_pattern`` names, whose tensors have the rank it gives them."""
    folder.mkdir(parents=True, exist_ok=True)
    pattern = rank_pattern or {}
    tensors = {}
    for module in MODULES:
        rank = pattern.get(module, tensor_rank)
        stem = f"base_model.model.model.layers.0.self_attn.{module}"
        tensors[f"{stem}.lora_A.weight"] = np.full((rank, 32), 0.01, np.float32)
        tensors[f"{stem}.lora_B.weight"] = np.full((48, rank), 0.01, np.float32)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    settings = {"peft_type": "LORA", "r": r, "lora_alpha": 16, "target_modules": list(MODULES), "rank_pattern": pattern}
    (folder / "adapter_config.json").write_text(json.dumps(settings))
    return folder


def write_mlx(folder: Path, *, rank: int, tensor_rank: int) -> Path:
    """An mlx-vlm LoRA folder (lora_a: in x r, lora_b: r x out) whose config says ``rank``."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = "language_model.model.layers.0.self_attn.q_proj"
    tensors = {
        f"{stem}.lora_a": np.full((32, tensor_rank), 0.01, np.float32),
        f"{stem}.lora_b": np.full((tensor_rank, 48), 0.01, np.float32),
    }
    save_file(tensors, str(folder / "adapters.safetensors"))
    config = {"fine_tune_type": "lora", "lora_parameters": {"rank": rank, "scale": 2.0, "keys": [stem]}}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def test_peft_config_rank_that_disagrees_with_the_tensors_is_refused_at_inspection(tmp_path: Path) -> None:
    folder = write_peft(tmp_path / "lora", r=8, tensor_rank=16)
    with pytest.raises(AdapterError) as error:
        inspect_adapter(folder)
    message = str(error.value)
    assert DISAGREE in message
    assert f"{folder / 'adapter_config.json'} says r=8" in message
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in message
    assert f"in {folder / 'adapter_model.safetensors'} has shape (16, 32), rank 16" in message
    assert "different training runs" in message and "--ftgate-base" not in message


def test_mlx_config_rank_that_disagrees_with_the_tensors_is_refused_at_inspection(tmp_path: Path) -> None:
    folder = write_mlx(tmp_path / "lora", rank=8, tensor_rank=16)
    with pytest.raises(AdapterError, match=r"adapter_config.json says rank=8, but tensor .*q_proj.lora_a .*rank 16"):
        inspect_adapter(folder)


def test_agreeing_ranks_and_peft_rank_pattern_are_accepted(tmp_path: Path) -> None:
    assert inspect_adapter(write_peft(tmp_path / "plain", r=8, tensor_rank=8)).rank == 8
    assert inspect_adapter(write_mlx(tmp_path / "mlx", rank=4, tensor_rank=4)).rank == 4
    # peft's rank_pattern gives q_proj its own rank (16); v_proj keeps r (8)
    patterned = inspect_adapter(write_peft(tmp_path / "pattern", r=8, tensor_rank=8, rank_pattern={"q_proj": 16}))
    assert patterned.tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"] == (16, 32)
    wrong_pattern = write_peft(tmp_path / "wrong-pattern", r=8, tensor_rank=8)  # all rank 8
    config = json.loads((wrong_pattern / "adapter_config.json").read_text())
    (wrong_pattern / "adapter_config.json").write_text(json.dumps({**config, "rank_pattern": {"v_proj": 16}}))
    with pytest.raises(AdapterError, match=r"says r=16, but tensor .*v_proj.lora_A.weight .*rank 8"):
        inspect_adapter(wrong_pattern)


def test_plugin_refuses_it_before_any_model_loads(gate_project: pytest.Pytester) -> None:
    folder = write_peft(gate_project.path / "lora", r=8, tensor_rank=16)
    gate_project.makepyfile(
        """
        import pytest

        @pytest.mark.ftgate("sentiment", max_drop=2.0)
        def test_gate():
            pass
        """
    )
    result = gate_project.runpytest(f"{options.ADAPTER}={folder}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{DISAGREE}*says r=8*rank 16*"])
    assert "passed" not in result.stdout.str() and "another base model" not in result.stderr.str()


@pytest.fixture(scope="module")
def tiny_adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny Gemma 4 and real rank-8 adapters for it (peft and mlx-tune formats)."""
    pytest.importorskip("mlx_tune", reason="make_adapter builds adapters with mlx-tune")
    from pytest_ftgate.testing import make_adapter, make_tiny_gemma4

    root = tmp_path_factory.mktemp("adapter-config")
    tiny = make_tiny_gemma4(root / "tiny-gemma4")
    return {
        "base": tiny,
        "peft": make_adapter(tiny, root / "peft", format="peft", seed=1),
        "mlx-tune": make_adapter(tiny, root / "mlx-tune", format="mlx-tune", seed=1),
    }


def _edited_rank(source: Path, dest: Path, rank: int) -> Path:
    shutil.copytree(source, dest)
    file = dest / "adapter_config.json"
    config = json.loads(file.read_text())
    if "lora_parameters" in config:
        config["lora_parameters"]["rank"] = rank
    else:
        config["r"] = rank
    file.write_text(json.dumps(config))
    return dest


@pytest.mark.parametrize("format", ["peft", "mlx-tune"])
def test_real_adapter_with_an_edited_rank_is_not_called_an_adapter_for_another_base(
    tiny_adapters: dict[str, Path], tmp_path: Path, format: str
) -> None:
    """The issue's case, on the backends that load these formats: the error is the disagreement,
    raised before the backend touches the model."""
    pytest.importorskip("torch", reason="torch not installed: pip install torch==2.13.0 -e .[torch]")
    pytest.importorskip("peft")
    from pytest_ftgate.backends.transformers import TransformersBackend

    folder = _edited_rank(tiny_adapters[format], tmp_path / format, 16)  # the weights are rank 8
    with pytest.raises(AdapterError, match="rank=16|r=16") as error:
        inspect_adapter(folder)
    assert DISAGREE in str(error.value) and "rank 8" in str(error.value)
    backend = TransformersBackend()
    base = backend.load(str(tiny_adapters["base"]))
    with pytest.raises(AdapterError, match=DISAGREE) as error:
        backend.with_adapter(base, str(folder))
    assert "another base model" not in str(error.value)
    assert base.handle.peft is None  # refused before anything was injected

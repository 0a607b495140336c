"""Checkpoints of a training run (``pytest_ftgate.checkpoints``): every layout, globs, lists, errors."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from pytest_ftgate.adapters import inspect_adapter
from pytest_ftgate.checkpoints import Checkpoint, one_checkpoint, resolve_checkpoints
from pytest_ftgate.errors import AdapterError

STEPS = [5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75, 80, 85, 90, 95, 100]
MLX_KEY = "language_model.model.layers.0.self_attn.q_proj"
PEFT_KEY = "base_model.model.model.language_model.layers.0.self_attn.q_proj"


@pytest.fixture(autouse=True)
def ftgate_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "ftgate-home"
    monkeypatch.setenv("FTGATE_HOME", str(home))
    return home


def _safetensors(path: Path, tensors: dict[str, list[float]]) -> None:
    """A real safetensors file of F32 tensors, each 2 x 2 (rank 2)."""
    header: dict[str, object] = {}
    payload = b""
    for name, values in tensors.items():
        data = struct.pack(f"<{len(values)}f", *values)
        header[name] = {"dtype": "F32", "shape": [2, 2], "data_offsets": [len(payload), len(payload) + len(data)]}
        payload += data
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + payload)


def _mlx_weights(path: Path, value: float) -> Path:
    _safetensors(path, {f"{MLX_KEY}.lora_a": [value] * 4, f"{MLX_KEY}.lora_b": [value] * 4})
    return path


def _mlx_config(folder: Path) -> None:
    config = {"fine_tune_type": "lora", "num_layers": -1, "lora_parameters": {"rank": 2, "scale": 1.0, "keys": [MLX_KEY]}}
    (folder / "adapter_config.json").write_text(json.dumps(config))


def peft_adapter(folder: Path, value: float) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    _safetensors(
        folder / "adapter_model.safetensors",
        {f"{PEFT_KEY}.lora_A.weight": [value] * 4, f"{PEFT_KEY}.lora_B.weight": [value] * 4},
    )
    config = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def mlx_adapter(folder: Path, value: float) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    _mlx_weights(folder / "adapters.safetensors", value)
    _mlx_config(folder)
    return folder


def trainer_run(root: Path, steps: list[int], final: float | None = None) -> Path:
    """A HF Trainer / TRL output folder: checkpoint-N/ (peft), optionally a top-level final adapter."""
    for step in steps:
        peft_adapter(root / f"checkpoint-{step}", float(step))
        (root / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if final is not None:
        peft_adapter(root, final)
    return root


def mlx_run(folder: Path, steps: list[int], final: float | None) -> Path:
    """An mlx-lm / mlx-tune / mlx-vlm trainer folder: NNNNNNN_adapters.safetensors and the final."""
    folder.mkdir(parents=True, exist_ok=True)
    _mlx_config(folder)
    for step in steps:
        _mlx_weights(folder / f"{step:07d}_adapters.safetensors", float(step))
    if final is not None:
        _mlx_weights(folder / "adapters.safetensors", final)
    return folder


def test_one_adapter_folder_is_one_checkpoint_as_before(tmp_path: Path) -> None:
    folder = mlx_adapter(tmp_path / "lora", 0.5)
    [checkpoint] = resolve_checkpoints(str(folder))
    assert checkpoint == Checkpoint(None, folder, str(folder))
    assert checkpoint.source == folder


def test_trainer_run_checkpoints_sort_by_step_as_numbers(tmp_path: Path) -> None:
    run = trainer_run(tmp_path / "out", STEPS)
    checkpoints = resolve_checkpoints(run)
    assert [c.step for c in checkpoints] == STEPS  # as text, 100 would sort before 15
    assert [c.path.name for c in checkpoints] == [f"checkpoint-{s}" for s in STEPS]
    assert checkpoints[-1].name.startswith("step 100 (")


def test_trainer_run_final_adapter_comes_after_the_last_step(tmp_path: Path) -> None:
    run = trainer_run(tmp_path / "out", [10, 20], final=99.0)
    checkpoints = resolve_checkpoints(run)
    assert [(c.step, c.path) for c in checkpoints] == [(10, run / "checkpoint-10"), (20, run / "checkpoint-20"), (None, run)]
    assert checkpoints[-1].label.endswith("(final)")


def test_trainer_run_final_identical_to_last_step_is_listed_once(tmp_path: Path) -> None:
    run = trainer_run(tmp_path / "out", [10, 20], final=20.0)  # save_model after the last save step
    checkpoints = resolve_checkpoints(run)
    assert [c.step for c in checkpoints] == [10, 20]
    assert checkpoints[-1].path == run / "checkpoint-20"


def test_mlx_step_saves_are_staged_as_adapter_folders(tmp_path: Path, ftgate_home: Path) -> None:
    folder = mlx_run(tmp_path / "adapters", STEPS, final=1.5)
    checkpoints = resolve_checkpoints(folder)
    assert [c.step for c in checkpoints] == [*STEPS, None]
    first = checkpoints[0]
    assert first.source == folder / "0000005_adapters.safetensors"
    assert first.label.endswith("0000005_adapters.safetensors")
    assert first.path.is_relative_to(ftgate_home / "checkpoints")
    info = inspect_adapter(first.path)  # loads like any adapter folder: its own weights, the run's config
    assert info.weights.read_bytes() == first.source.read_bytes()
    assert json.loads((first.path / "adapter_config.json").read_text()) == json.loads(
        (folder / "adapter_config.json").read_text()
    )
    assert checkpoints[-1].path == folder
    # staged once: the same folder again on a second resolve, a new one when the save changes
    assert resolve_checkpoints(folder)[0].path == first.path
    _mlx_weights(folder / "0000005_adapters.safetensors", 7.0)
    os.utime(folder / "0000005_adapters.safetensors", ns=(1, 1))
    restaged = resolve_checkpoints(folder)[0].path
    assert restaged != first.path
    assert inspect_adapter(restaged).weights.read_bytes() == (folder / "0000005_adapters.safetensors").read_bytes()


def test_mlx_final_identical_to_last_step_is_the_final_folder_at_that_step(tmp_path: Path) -> None:
    folder = mlx_run(tmp_path / "adapters", [50, 100], final=100.0)
    checkpoints = resolve_checkpoints(folder)
    assert [(c.step, c.path) for c in checkpoints][-1] == (100, folder)
    assert len(checkpoints) == 2


def test_mlx_tune_output_dir_uses_its_adapters_subfolder(tmp_path: Path) -> None:
    output_dir = tmp_path / "outputs"
    mlx_run(output_dir / "adapters", [10, 20], final=3.0)
    assert [c.step for c in resolve_checkpoints(output_dir)] == [10, 20, None]


def test_mlx_vlm_trainer_layout(tmp_path: Path) -> None:
    """mlx_vlm.trainer.sft_trainer: ``save_adapter(model, adapter_file)`` and, every
    steps_per_save, ``adapter_file.parent / f"{it:07d}_adapters.safetensors"``, with
    adapter_config.json beside them (mlx_vlm.trainer.utils.save_adapter)."""
    folder = mlx_run(tmp_path / "run", [100, 200, 300], final=300.0)
    checkpoints = resolve_checkpoints(folder / "0000200_adapters.safetensors")
    assert [c.step for c in checkpoints] == [200]
    assert [c.step for c in resolve_checkpoints(folder)] == [100, 200, 300]


def test_glob_and_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = trainer_run(tmp_path / "out", [5, 100, 20])
    monkeypatch.chdir(tmp_path)
    by_glob = resolve_checkpoints("out/checkpoint-*")
    assert [c.step for c in by_glob] == [5, 20, 100]
    assert [c.label for c in by_glob] == [os.path.join("out", f"checkpoint-{s}") for s in (5, 20, 100)]
    listed = resolve_checkpoints(f"{run}/checkpoint-100,{run}/checkpoint-5")
    assert [c.step for c in listed] == [5, 100]
    a, b = mlx_adapter(tmp_path / "runs" / "b", 1.0), mlx_adapter(tmp_path / "runs" / "a", 2.0)
    assert [c.path for c in resolve_checkpoints([a, b])] == [a, b]  # no steps: the order given
    assert [c.path for c in resolve_checkpoints(f"{b}, {a}")] == [b, a]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("out/checkpoint-9*", "no adapter or checkpoint matches out/checkpoint-9*"),
        ("out/nothing", "adapter folder out/nothing does not exist"),
        ("out/checkpoint-5,out/checkpoint-5", "listed twice"),
        ("out/checkpoint-5,out/../out/checkpoint-5", "listed twice"),
        ("out/checkpoint-5,other/checkpoint-5", "step 5 appears twice"),
        ("out/checkpoint-5,lora", "cannot order the checkpoints"),
        ("out", "step 10 appears twice in out: out/checkpoint-010 and out/checkpoint-10"),
        (" , ", "no adapter given"),
    ],
)
def test_errors_name_the_paths_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: str, expected: str
) -> None:
    trainer_run(tmp_path / "out", [5, 10])
    trainer_run(tmp_path / "other", [5])
    mlx_adapter(tmp_path / "lora", 1.0)
    if spec == "out":  # checkpoint-10 and checkpoint-010: which one is step 10?
        peft_adapter(tmp_path / "out" / "checkpoint-010", 1.0)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AdapterError) as info:
        resolve_checkpoints(spec)
    assert expected in info.value.render(lambda s: f"--ftgate-{s}")


def test_a_broken_checkpoint_is_an_error_never_skipped(tmp_path: Path) -> None:
    run = trainer_run(tmp_path / "out", [10, 20, 30])
    (run / "checkpoint-20" / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterError, match=r"checkpoint step 20 \(.*checkpoint-20\) of .* is broken: .* holds no adapter"):
        resolve_checkpoints(run)
    peft_adapter(run / "checkpoint-20", 1.0)
    weights = run / "checkpoint-20" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4])  # truncated
    with pytest.raises(AdapterError, match="checkpoint step 20 .* truncated"):
        resolve_checkpoints(run)
    peft_adapter(run / "checkpoint-20", float("nan"))  # diverged
    with pytest.raises(AdapterError, match="checkpoint step 20 .* NaN"):
        resolve_checkpoints(run)


def test_a_broken_mlx_step_save_is_an_error(tmp_path: Path) -> None:
    folder = mlx_run(tmp_path / "adapters", [10, 20], final=2.0)
    _mlx_weights(folder / "0000010_adapters.safetensors", float("inf"))
    with pytest.raises(AdapterError, match=r"checkpoint step 10 \(.*0000010_adapters.safetensors\) .* infinite"):
        resolve_checkpoints(folder)
    (folder / "adapter_config.json").unlink()
    with pytest.raises(AdapterError, match="is an mlx step save, but .* has no adapter_config.json"):
        resolve_checkpoints(folder)


def test_one_checkpoint_refuses_several(tmp_path: Path) -> None:
    run = trainer_run(tmp_path / "out", [10, 20])
    with pytest.raises(AdapterError, match=r"reference /.* names 2 checkpoints .* where one adapter is needed"):
        one_checkpoint(resolve_checkpoints(run), str(run), "reference")

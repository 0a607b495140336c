"""The transformers + peft backend on a tiny random Gemma 4: loading, batched greedy generation,
adapter injection in all three on-disk formats, the fit and no-effect checks, and agreement with
the mlx backend's logits on the same folder."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch", reason="torch not installed: pip install torch==2.13.0 -e .[torch]")
pytest.importorskip("transformers")
pytest.importorskip("peft")

import torch  # noqa: E402

from pytest_ftgate import AdapterError  # noqa: E402
from pytest_ftgate.backends import Model, create_backend  # noqa: E402
from pytest_ftgate.backends.transformers import TransformersBackend  # noqa: E402
from pytest_ftgate.errors import ModelError  # noqa: E402
from pytest_ftgate.testing import FPB_SYSTEM, make_tiny_gemma4  # noqa: E402

PROMPTS = [
    [{"role": "system", "content": FPB_SYSTEM}, {"role": "user", "content": user}]
    for user in (
        "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn in the corresponding period in 2007.",
        "Shares of the bank fell.",
        "The agreement was signed on Monday and the deal will be completed next year, the company said.",
    )
]
MAX_TOKENS = 8


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_gemma4(tmp_path_factory.mktemp("models") / "tiny-gemma4")


@pytest.fixture(scope="session")
def adapters(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("mlx_tune", reason="make_adapter builds adapters with mlx-tune")
    from pytest_ftgate.testing import make_adapter

    root = tmp_path_factory.mktemp("tf-adapters")
    return {
        "peft": make_adapter(tiny, root / "peft", format="peft", strength=1.0, seed=1),
        "mlx-tune": make_adapter(tiny, root / "mlx-tune", format="mlx-tune", strength=1.0, seed=1),
        "mlx-vlm": make_adapter(tiny, root / "mlx-vlm", format="mlx-vlm", strength=1.0, seed=1),
        "empty": make_adapter(tiny, root / "empty", format="peft", strength=0.0, seed=1),
    }


@pytest.fixture(scope="module")
def loaded(tiny: Path) -> dict[str, Any]:
    """One backend and base for the module, with its outputs recorded before any adapter."""
    backend = TransformersBackend()
    base = backend.load(str(tiny))
    return {
        "backend": backend,
        "base": base,
        "logits": backend.effect_logits(base),
        "replies": backend.generate(base, PROMPTS, max_tokens=MAX_TOKENS, batch_size=None),
    }


def _change(backend: TransformersBackend, base: Model, tuned: Model) -> float:
    return float((backend.effect_logits(tuned) - backend.effect_logits(base)).abs().max())


def test_importing_the_module_does_not_import_torch() -> None:
    code = "import sys, pytest_ftgate.backends.transformers; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_registered_under_its_name() -> None:
    assert isinstance(create_backend("transformers"), TransformersBackend)


def test_load(loaded: dict[str, Any], tiny: Path) -> None:
    backend, base = loaded["backend"], loaded["base"]
    assert base.label == str(tiny) and base.adapter is None and base.backend is backend
    assert len(base.fingerprint) == 64
    assert base.handle.tokenizer.padding_side == "left" and base.handle.tokenizer.pad_token is not None
    assert type(base.handle.model).__name__ == "Gemma4ForConditionalGeneration"
    assert base.handle.dtype == ("bfloat16" if torch.cuda.is_available() else "float32")
    assert backend.version().startswith("torch==") and " transformers==" in backend.version()
    logits = loaded["logits"]
    assert logits.dtype == torch.float32 and logits.shape[0] == 1 and logits.shape[-1] > 256
    assert TransformersBackend().load(str(tiny)).fingerprint == base.fingerprint  # stable


def test_batched_generation_equals_one_at_a_time(loaded: dict[str, Any]) -> None:
    backend, base = loaded["backend"], loaded["base"]
    one_by_one = [backend.generate(base, [p], max_tokens=MAX_TOKENS, batch_size=1)[0] for p in PROMPTS]
    assert loaded["replies"] == one_by_one
    assert backend.generate(base, PROMPTS, max_tokens=MAX_TOKENS, batch_size=2) == one_by_one
    assert all(isinstance(r, str) and r for r in one_by_one)


def test_peft_adapter_acts_and_base_is_untouched(loaded: dict[str, Any], adapters: dict[str, Path]) -> None:
    backend, base = loaded["backend"], loaded["base"]
    tuned = backend.with_adapter(base, str(adapters["peft"]))
    assert tuned.handle is base.handle, "base and tuned must share one copy of the weights"
    assert tuned.adapter and tuned.fingerprint.startswith(base.fingerprint + "+")
    assert _change(backend, base, tuned) > 1e-3
    assert backend.generate(tuned, PROMPTS, max_tokens=MAX_TOKENS, batch_size=None) != loaded["replies"]
    # after the tuned model ran, the base (adapter disabled) is exactly what it was before injection
    assert torch.equal(backend.effect_logits(base), loaded["logits"])
    assert backend.generate(base, PROMPTS, max_tokens=MAX_TOKENS, batch_size=None) == loaded["replies"]


@pytest.mark.filterwarnings("ignore::FutureWarning")  # peft's own is_gradient_checkpointing call
def test_peft_adapter_matches_peft_from_pretrained(
    loaded: dict[str, Any], adapters: dict[str, Path], tiny: Path
) -> None:
    """Injection on the shared base equals peft's own loading on a fresh copy."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from pytest_ftgate.backends.local import EFFECT_PROMPT

    backend, base = loaded["backend"], loaded["base"]
    tuned = backend.with_adapter(base, str(adapters["peft"]))
    ours = backend.effect_logits(tuned)
    fresh = AutoModelForCausalLM.from_pretrained(tiny, dtype=base.handle.model.dtype).to(base.handle.model.device)
    reference = PeftModel.from_pretrained(fresh, adapters["peft"])
    batch = backend._encode(base.handle, [backend._prompt(base.handle, EFFECT_PROMPT)]).to(reference.device)
    with torch.inference_mode():
        theirs = reference(**batch).logits.float().cpu()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_mlx_formats_have_the_same_effect_as_peft(loaded: dict[str, Any], adapters: dict[str, Path]) -> None:
    """make_adapter writes one delta in three layouts; mlx-tune records scale alpha/r but trains
    with alpha/r**2: the tuned model must be the same through each."""
    backend, base = loaded["backend"], loaded["base"]
    tuned = {fmt: backend.with_adapter(base, str(adapters[fmt])) for fmt in ("peft", "mlx-tune", "mlx-vlm")}
    logits = {fmt: backend.effect_logits(model) for fmt, model in tuned.items()}
    changes = {fmt: float((value - loaded["logits"]).abs().max()) for fmt, value in logits.items()}
    assert changes["peft"] > 1e-3
    assert changes["mlx-tune"] == pytest.approx(changes["peft"], rel=1e-3)
    assert changes["mlx-vlm"] == pytest.approx(changes["peft"], rel=1e-3)
    torch.testing.assert_close(logits["mlx-tune"], logits["peft"], rtol=1e-4, atol=1e-4)
    assert torch.equal(backend.effect_logits(base), loaded["logits"])


def test_effect_logits_agree_with_the_mlx_backend(loaded: dict[str, Any], adapters: dict[str, Path], tiny: Path) -> None:
    """Same folder, same adapter, two frameworks: logits agree to float32 noise (measured ~1e-5)."""
    pytest.importorskip("mlx_vlm")
    import numpy as np

    from pytest_ftgate.backends.mlx import MLXBackend

    backend, base = loaded["backend"], loaded["base"]
    if base.handle.dtype != "float32":
        pytest.skip("cross-backend comparison needs the float32 (CPU) model")
    mlx = MLXBackend()
    mlx_base = mlx.load(str(tiny))
    mlx_tuned = mlx.with_adapter(mlx_base, str(adapters["mlx-tune"]))
    tuned = backend.with_adapter(base, str(adapters["mlx-tune"]))
    for ours, theirs in ((base, mlx_base), (tuned, mlx_tuned)):
        mine = backend.effect_logits(ours).numpy().reshape(-1, 917)  # (positions, vocabulary)
        other = np.array(mlx.effect_logits(theirs)).reshape(-1, 917)
        assert mine.shape == other.shape
        assert float(np.abs(mine - other).max()) < 1e-3
        assert (mine.argmax(-1) == other.argmax(-1)).all()


def test_adapter_without_effect_is_refused(loaded: dict[str, Any], adapters: dict[str, Path], tiny: Path) -> None:
    no_effect = "has no effect: the model's logits on a probe prompt are unchanged"
    with pytest.raises(AdapterError, match=no_effect):  # beside other adapters: deleted again
        loaded["backend"].with_adapter(loaded["base"], str(adapters["empty"]))
    assert torch.equal(loaded["backend"].effect_logits(loaded["base"]), loaded["logits"])
    backend = TransformersBackend()  # as the first adapter: peft is unloaded, the base is plain again
    base = backend.load(str(tiny))
    with pytest.raises(AdapterError, match=no_effect):
        backend.with_adapter(base, str(adapters["empty"]))
    assert base.handle.peft is None and not base.handle.adapters
    assert torch.equal(backend.effect_logits(base), loaded["logits"])
    assert _change(backend, base, backend.with_adapter(base, str(adapters["peft"]))) > 1e-3


@pytest.mark.parametrize("case", ["unknown", "shape", "mlx-unknown"])
def test_adapter_for_another_base_is_refused(
    loaded: dict[str, Any], adapters: dict[str, Path], tmp_path: Path, case: str
) -> None:
    from safetensors.torch import load_file, save_file

    source = adapters["mlx-tune" if case.startswith("mlx") else "peft"]
    folder = tmp_path / case
    shutil.copytree(source, folder)
    weights = next(folder.glob("*.safetensors"))
    tensors = load_file(str(weights))
    if case == "shape":
        tensors = {k: torch.zeros(v.shape[0], v.shape[1] * 2) if ".lora_A." in k else v for k, v in tensors.items()}
    else:
        tensors = {k.replace("layers.0.", "layers.7."): v for k, v in tensors.items()}
    save_file(tensors, str(weights))
    backend, base = loaded["backend"], loaded["base"]
    expected = "0 unknown keys, 14 shape mismatches" if case == "shape" else "14 unknown keys, 0 shape mismatches"
    with pytest.raises(AdapterError, match=f"does not fit base model .*{expected}.*trained for another base model"):
        backend.with_adapter(base, str(folder))
    assert torch.equal(backend.effect_logits(base), loaded["logits"])


def test_missing_or_unusable_base_folder(tmp_path: Path) -> None:
    backend = TransformersBackend()
    with pytest.raises(ModelError, match="model folder .*nope does not exist: check --ftgate-base"):
        backend.load(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="has no config.json"):
        backend.load(str(tmp_path / "empty"))
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04N.")
    with pytest.raises(ModelError, match="pytorch_model.bin is a pickle file.*FTGATE_ALLOW_PICKLE=1"):
        backend.load(str(pickled))


def test_corrupt_base_is_a_model_error(tiny: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny, broken)
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(ModelError, match=f"transformers could not load base model {broken}"):
        TransformersBackend().load(str(broken))


def test_template_without_system_role_gets_it_folded_into_the_user_turn(tiny: Path, tmp_path: Path) -> None:
    folder = tmp_path / "no-system"
    shutil.copytree(tiny, folder)
    template = (folder / "chat_template.jinja").read_text()
    (folder / "chat_template.jinja").write_text(
        "{%- if messages[0]['role'] == 'system' -%}{{ raise_exception('System role not supported') }}{%- endif -%}\n"
        + template
    )
    backend = TransformersBackend()
    model = backend.load(str(folder))
    prompt = backend._prompt(model.handle, PROMPTS[0])
    assert f"<|turn>user\n{FPB_SYSTEM}\n\nOperating profit" in prompt and "<|turn>system" not in prompt
    assert len(backend.generate(model, PROMPTS[:2], max_tokens=2, batch_size=None)) == 2


def test_load_never_runs_code_from_the_hub(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers >= 5.1x replaces layers with kernels downloaded from the hub on CUDA unless
    told not to (seen on an H200 with transformers 5.25: a tiny Gemma 4 folder failed to load,
    asking for 'kernels-community/activation'); ftgate asks for neither kernels nor remote code."""
    import transformers

    seen: dict[str, Any] = {}
    original = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    TransformersBackend().load(str(tiny))
    assert seen["use_kernels"] is False
    assert not seen.get("trust_remote_code")

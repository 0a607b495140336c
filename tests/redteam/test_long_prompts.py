"""Red team, issue 12 item 11: an example longer than the model's context.

A 50 MB line in a custom JSONL benchmark ran for 127 s, took 6.6 GB of memory and ended in a raw
allocator traceback. Now prompts that cannot fit (prompt plus reply budget) are refused before the
first batch, by file and line, with their length, the context and the fix; a prompt far too long
to fit is refused without being tokenized. Checked with every local backend installed
(transformers, mlx) on a real tiny model: the tiny Gemma 4, whose context is 4096 tokens."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest

from pytest_ftgate import Benchmark, Gate
from pytest_ftgate.cache import PredictionCache
from pytest_ftgate.errors import DataError
from pytest_ftgate.runner import evaluate
from pytest_ftgate.testing import make_tiny_gemma4

CONTEXT = 4096  # max_position_embeddings of the tiny Gemma 4's text config
SENTENCE = "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn in the corresponding period. "
LOCAL_BACKENDS = {
    "transformers": ("pytest_ftgate.backends.transformers", "TransformersBackend", ("torch", "transformers")),
    "mlx": ("pytest_ftgate.backends.mlx", "MLXBackend", ("mlx", "mlx_vlm")),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_gemma4(tmp_path_factory.mktemp("models") / "tiny-gemma4")


@pytest.fixture(scope="module", params=sorted(LOCAL_BACKENDS))
def local_backend(request: pytest.FixtureRequest) -> Any:
    """A local backend whose generate and score only count their calls, and whose count_tokens
    records the length of every prompt it was asked to tokenize."""
    module_name, class_name, needs = LOCAL_BACKENDS[request.param]
    for module in needs:
        extra = "torch==2.13.0 -e .[torch]" if module in ("torch", "transformers") else "-e .[mlx]"
        pytest.importorskip(module, reason=f"{module} not installed: pip install {extra}")
    cls = getattr(importlib.import_module(module_name), class_name)

    class Spy(cls):  # type: ignore[misc, valid-type]
        calls: list[str] = []
        tokenized: list[int] = []

        def generate(self, model: Any, prompts: Any, **kwargs: Any) -> list[str]:
            self.calls.append("generate")
            return ["positive"] * len(prompts)

        def score(self, model: Any, prompts: Any, continuations: Any) -> list[list[float]]:
            self.calls.append("score")
            return [[0.0] * len(continuations) for _ in prompts]

        def count_tokens(self, model: Any, prompts: Any) -> list[int]:
            self.tokenized.extend(sum(len(m["content"]) for m in messages) for messages in prompts)
            return super().count_tokens(model, prompts)  # type: ignore[no-any-return]

    return Spy()


@pytest.fixture
def backend(local_backend: Any) -> Any:
    local_backend.calls.clear()
    local_backend.tokenized.clear()
    return local_backend


def write_rows(path: Path, sentences: list[str]) -> Path:
    with path.open("w") as handle:
        for i, sentence in enumerate(sentences):
            handle.write(json.dumps({"id": f"r{i}", "sentence": sentence, "label": "positive"}) + "\n")
    return path


def sentiment(path: Path, max_tokens: int = 8) -> Benchmark:
    return Benchmark.from_jsonl(
        "long", path, system="Answer with one word.", template="{sentence}", answer="label", kind="label",
        choices=("positive", "negative", "neutral"), max_tokens=max_tokens, title="Long",
    )  # fmt: skip


def test_a_huge_line_is_refused_by_file_and_line_before_any_batch(tiny: Path, backend: Any, tmp_path: Path) -> None:
    huge = SENTENCE * (3_000_000 // len(SENTENCE))  # 3 MB on line 2
    data = write_rows(tmp_path / "data.jsonl", ["Shares rose.", huge, "Shares fell."])
    gate = Gate(base=str(tiny), backend=backend, cache=None)
    with pytest.raises(DataError) as info:
        gate.baseline(sentiment(data))
    message = str(info.value)
    assert f"{data}:2: {len(huge) + len('Answer with one word.'):,} characters" in message  # system included
    assert "1 of 3 prompts do not fit the context of" in message and f"({CONTEXT:,} tokens" in message
    assert "shorten or drop these examples, or use a model with a longer context" in message
    assert backend.calls == []  # no batch ran
    assert len(huge) not in backend.tokenized  # refused on its length alone: never tokenized


def test_a_line_slightly_too_long_is_measured_in_tokens(tiny: Path, backend: Any, tmp_path: Path) -> None:
    long = SENTENCE * 400  # ~33,000 characters: under the cheap guard, over 4096 tokens
    data = write_rows(tmp_path / "data.jsonl", ["Shares rose.", "Shares fell.", long, long])
    bench = sentiment(data)
    model = backend.load(str(tiny))
    tokens = backend.count_tokens(model, [bench.messages(e) for e in bench.load()])[2]
    assert tokens > CONTEXT
    with pytest.raises(DataError) as info:
        evaluate(bench, bench.load(), model, cache=PredictionCache(None))
    message = str(info.value)
    assert f"{data}:3: {tokens:,} tokens" in message and f"{data}:4: {tokens:,} tokens" in message
    assert f"{data}:1:" not in message and "2 of 4 prompts" in message
    assert backend.calls == []


@pytest.mark.parametrize("mode", ["generate", "logprob"])
def test_the_reply_must_fit_too(tiny: Path, backend: Any, tmp_path: Path, mode: str) -> None:
    """A prompt that fits alone, but not with ``max_tokens`` new tokens, is refused in generate
    mode; in logprob mode only the longest answer form needs room."""
    model = backend.load(str(tiny))
    data = write_rows(tmp_path / "data.jsonl", [SENTENCE * 40])
    probe = sentiment(data)
    prompt = backend.count_tokens(model, [probe.messages(e) for e in probe.load()])[0]
    assert 100 < prompt < CONTEXT - 100
    bench = sentiment(data, max_tokens=CONTEXT - prompt + 1)  # one token too many for generate
    run = {"cache": PredictionCache(None), "mode": mode}
    if mode == "generate":
        with pytest.raises(DataError, match=rf"{data}:1: {prompt:,} tokens"):
            evaluate(bench, bench.load(), model, **run)
        assert backend.calls == []
        evaluate(sentiment(data, max_tokens=CONTEXT - prompt), probe.load(), model, **run)  # exactly fits
        assert backend.calls == ["generate"]
    else:
        evaluate(bench, bench.load(), model, **run)  # "positive" needs 8 tokens at most, not max_tokens
        assert backend.calls == ["score"]


def test_examples_know_their_file_and_line(tmp_path: Path) -> None:
    data = write_rows(tmp_path / "data.jsonl", ["a", "b"])
    examples = sentiment(data).load()
    assert [e.source for e in examples] == [f"{data}:1", f"{data}:2"]
    # where an example came from is not part of what it is
    assert examples[0] == type(examples[0])(examples[0].id, examples[0].prompt, examples[0].gold, examples[0].text,
                                            examples[0].stratum)  # fmt: skip


def test_a_backend_without_a_context_length_is_not_checked(tmp_path: Path) -> None:
    """Served models (the openai backend) report no context: their server says when it is too long."""
    from pytest_ftgate.backends import Model

    class Served:
        name = "served"

        def generate(self, model: Any, prompts: Any, **kwargs: Any) -> list[str]:
            return ["positive"] * len(prompts)

    huge = SENTENCE * 1000
    data = write_rows(tmp_path / "data.jsonl", [huge])
    bench = sentiment(data)
    backend = Served()
    model = Model(label="m", fingerprint="m", backend=backend, handle=None)  # type: ignore[arg-type]
    result = evaluate(bench, bench.load(), model, cache=PredictionCache(None))
    assert result.n == 1

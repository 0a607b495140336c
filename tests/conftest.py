"""Shared fixtures: a pytester project with a fake backend (plugin logic only) and real tiny models."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

try:  # loaded once for the whole session: in-process pytester runs that import numpy first (an
    import numpy  # noqa: F401  adapter's tensors are scanned with it) would otherwise unload it, and a
except ImportError:  # later import fails with "cannot load module more than once per process"
    pass

REPO = Path(__file__).resolve().parent.parent
# Real benchmark data (fpb/, medmcqa/, convfinqa/, chatdoctor_genmedgpt5k/): $FTGATE_TEST_DATA, else
# ../shared/data beside the repository. Tests reach it through the ``shared_data`` fixture.
DATA_ENV = "FTGATE_TEST_DATA"
SHARED_DATA = Path(os.environ.get(DATA_ENV) or REPO.parent / "shared" / "data").expanduser().resolve()

# A conftest for pytester projects. The fake backend answers from the prompt itself: the base
# model gives the gold word written into each question; an adapter folder's "fake_flips" says how
# many examples (the first ones) the tuned model gets wrong, and "fake_fixes" whether the tuned
# model fixes the questions the base gets wrong (marked "(base wrong)").
FAKE_CONFTEST = r"""
import json, re
from pathlib import Path
import pytest
import pytest_ftgate
from pytest_ftgate.backends import Model

CALLS = {"generate": 0, "examples": 0}

class FakeBackend:
    name = "fake"
    def version(self):
        return "fake-1"
    def load(self, model):
        return Model(label=Path(model).name, fingerprint="base-" + Path(model).name, backend=self, handle={"flips": 0, "fixes": False})
    def with_adapter(self, base, adapter):
        cfg = json.loads((Path(adapter) / "adapter_config.json").read_text())
        if cfg.get("fake_no_effect"):
            raise pytest_ftgate.AdapterError(f"adapter {adapter} has no effect")
        handle = {"flips": cfg.get("fake_flips", 0), "fixes": cfg.get("fake_fixes", False)}
        return Model(label=base.label + "+lora", fingerprint=base.fingerprint + "+" + json.dumps(cfg, sort_keys=True), backend=self, handle=handle, adapter=adapter)
    def generate(self, model, prompts, *, max_tokens, batch_size):
        import os, time
        time.sleep(float(os.environ.get("FAKE_DELAY", "0")))
        CALLS["generate"] += 1
        CALLS["examples"] += len(prompts)
        out = []
        for messages in prompts:
            text = messages[-1]["content"]
            gold = re.search(r"answer: (\w+)", text).group(1)
            index = int(re.search(r"#(\d+)", text).group(1))
            base_wrong = "(base wrong)" in text
            wrong = "negative" if gold != "negative" else "positive"
            if model.adapter is None:
                out.append(wrong if base_wrong else gold)
            elif index < model.handle["flips"]:
                out.append(wrong)
            elif base_wrong:
                out.append(gold if model.handle["fixes"] else wrong)
            else:
                out.append(gold)
        return out

def pytest_ftgate_make_backend(name, config):
    return FakeBackend() if name == "fake" else None

pytest_ftgate.register_benchmark(
    pytest_ftgate.Benchmark.from_jsonl(
        "sentiment", Path(__file__).parent / "sentiment.jsonl",
        system="Answer with one word.", template="{q}", answer="a", kind="label",
        choices=("positive", "negative", "neutral"), max_tokens=8, title="Sentiment",
    )
)
"""


def write_sentiment(path: Path, n: int = 40, base_wrong: int = 0) -> None:
    labels = ["positive", "negative", "neutral"]
    with path.open("w") as handle:
        for i in range(n):
            mark = " (base wrong)" if i >= n - base_wrong else ""
            row = {"id": f"s{i:03d}", "q": f"#{i} sentence, answer: {labels[i % 3]}{mark}", "a": labels[i % 3]}
            handle.write(json.dumps(row) + "\n")


def write_fake_adapter(folder: Path, **config: object) -> Path:
    """A structurally valid mlx adapter folder (real safetensors header) with fake settings."""
    folder.mkdir(parents=True, exist_ok=True)
    payload = b"\0" * 16
    header = json.dumps(
        {
            "language_model.model.layers.0.self_attn.q_proj.lora_a": {
                "dtype": "F32",
                "shape": [2, 2],
                "data_offsets": [0, 16],
            }
        }
    ).encode()
    (folder / "adapters.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + payload)
    cfg = {
        "fine_tune_type": "lora",
        "num_layers": 1,
        "lora_parameters": {
            "rank": 2,
            "scale": 1.0,
            "dropout": 0.0,
            "keys": ["language_model.model.layers.0.self_attn.q_proj"],
        },
    }
    cfg.update(config)
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return folder


@pytest.fixture
def gate_project(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester project: fake backend, a 40-example custom benchmark, a base folder, ini defaults."""
    pytester.makeconftest(FAKE_CONFTEST)
    write_sentiment(pytester.path / "sentiment.jsonl")
    (pytester.path / "base").mkdir()
    pytester.makeini("[pytest]\nftgate_backend = fake\nftgate_base = base\n")
    return pytester


@pytest.fixture
def fake_adapter_folder(gate_project: pytest.Pytester) -> Callable[..., Path]:
    """``fake_adapter_folder(name="lora", **config)``: write a fake adapter into the gate project
    (see ``write_fake_adapter``; ``fake_flips=N``, ``fake_fixes=True``, ``fake_no_effect=True``) and
    return its folder."""

    def make(name: str = "lora", **config: object) -> Path:
        return write_fake_adapter(gate_project.path / name, **config)

    return make


@pytest.fixture
def fake_adapter(fake_adapter_folder: Callable[..., Path]) -> Callable[..., str]:
    """``fake_adapter(name="lora", **config)``: like ``fake_adapter_folder``, but returns the
    ``--ftgate-adapter=DIR`` argument."""

    def make(name: str = "lora", **config: object) -> str:
        return f"--ftgate-adapter={fake_adapter_folder(name, **config)}"

    return make


@pytest.fixture
def sentiment_file(gate_project: pytest.Pytester) -> Callable[..., Path]:
    """``sentiment_file(n=40, base_wrong=0)``: rewrite the gate project's ``sentiment.jsonl`` with
    ``n`` examples, the last ``base_wrong`` of which the fake base model answers wrongly."""

    def make(n: int = 40, base_wrong: int = 0) -> Path:
        path = gate_project.path / "sentiment.jsonl"
        write_sentiment(path, n=n, base_wrong=base_wrong)
        return path

    return make


@pytest.fixture(scope="session")
def shared_data() -> Callable[..., Path]:
    """``shared_data(*needed)``: the real benchmark data folder; skips the test (naming
    $FTGATE_TEST_DATA) unless each ``needed`` path (e.g. ``"fpb"``, ``"medmcqa/validation.jsonl"``)
    exists in it. Call it before building anything expensive."""

    def find(*needed: str) -> Path:
        missing = [name for name in needed or ("",) if not (SHARED_DATA / name).exists()]
        if missing:
            pytest.skip(
                f"benchmark data not found: {SHARED_DATA / missing[0]} "
                f"(set {DATA_ENV} to a folder with fpb/, medmcqa/, ...; default ../shared/data beside the repository)"
            )
        return SHARED_DATA

    return find


@pytest.fixture
def openai_server() -> Iterator[Any]:
    """A scripted OpenAI-compatible chat server on 127.0.0.1 (``tests/servers.py``: ``FakeServer``):
    ``.url`` to pass as ``base_url``, ``.script`` answers to give first (``FakeServer.ok(text)``),
    ``.models`` it lists, ``.requests`` it received, ``.stop()`` to take it away mid-test."""
    import importlib.util
    import sys

    servers = sys.modules.get("ftgate_test_servers")
    if servers is None:
        spec = importlib.util.spec_from_file_location("ftgate_test_servers", Path(__file__).with_name("servers.py"))
        assert spec is not None and spec.loader is not None
        servers = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = servers  # dataclasses look their module up there
        spec.loader.exec_module(servers)
    with servers.serve() as server:
        yield server

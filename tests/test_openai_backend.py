"""The ``openai`` backend against real servers on 127.0.0.1: mlx_lm.server (one and two replicas) and a
scripted stdlib server for failures (refused port, 500s, 429 with Retry-After, malformed replies, keys)."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pytest_ftgate import AdapterError, Benchmark, Gate, ModelError
from pytest_ftgate.backends import create_backend
from pytest_ftgate.backends.openai import OpenAIBackend, normalize_urls
from pytest_ftgate.errors import BackendError, ConfigError

SENTENCES = [
    "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn.",
    "The company will cut 200 jobs in Finland.",
    "Net sales were flat compared with last year.",
    "Shares jumped 12% after the merger was announced.",
    "Revenue fell sharply in the third quarter.",
    "The board proposes a dividend of EUR 0.50.",
    "Pre-tax loss totalled EUR 2.5 mn.",
    "The contract is worth about EUR 1 mn.",
]
SYSTEM = "You are a financial sentiment analyst. Respond with ONLY one word: positive, negative, or neutral."
PROMPTS = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": s}] for s in SENTENCES]
SECRET = "sk-ftgate-test-0123456789abcdef"


def fast(url: str) -> OpenAIBackend:
    """Two retries without the production waits."""
    return OpenAIBackend(url, backoff=0.001, retries=2)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own server and key must not leak into these tests."""
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name in ("CONCURRENCY", "TIMEOUT", "RETRIES", "BACKOFF", "MAX_WAIT"):
        monkeypatch.delenv(f"FTGATE_OPENAI_{name}", raising=False)


# -- a scripted OpenAI-compatible server (tests/servers.py, through the openai_server fixture) ------


@pytest.fixture
def fake(openai_server: Any) -> Any:
    return openai_server


# -- unit-level behaviour against the scripted server ---------------------------------------------


def test_urls_are_normalized() -> None:
    assert normalize_urls("http://127.0.0.1:8000") == ["http://127.0.0.1:8000/v1"]
    assert normalize_urls("http://h:1/v1/, http://h:2/v1/chat/completions") == ["http://h:1/v1", "http://h:2/v1"]
    assert normalize_urls("https://api.example.com/api/v1") == ["https://api.example.com/api/v1"]
    with pytest.raises(ConfigError, match="not an http"):
        normalize_urls("127.0.0.1:8000")


def test_needs_a_server_and_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BackendError, match="--ftgate-base-url=http://127.0.0.1:8000/v1 or set OPENAI_BASE_URL"):
        create_backend("openai")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:11434")
    monkeypatch.setenv("FTGATE_OPENAI_CONCURRENCY", "3")
    backend = create_backend("openai", base_url=None)
    assert isinstance(backend, OpenAIBackend)
    assert backend.base_url == "http://127.0.0.1:11434/v1"
    assert backend.concurrency == 3


def test_unreachable_port_fails_fast() -> None:
    port = free_port()  # nothing listens there
    backend = OpenAIBackend(f"http://127.0.0.1:{port}/v1")
    start = time.monotonic()
    with pytest.raises(BackendError) as info:
        backend.load("any-model")
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert f"http://127.0.0.1:{port}/v1" in message and "--ftgate-base-url" in message


def test_retries_500_then_succeeds(fake: Any) -> None:
    backend = fast(fake.url)
    model = backend.load("fake-model")
    fake.requests.clear()
    fake.script = [(500, {"error": "boom"}, {}), (502, b"bad gateway", {}), fake.ok("positive")]
    assert backend.generate(model, PROMPTS[:1], max_tokens=8, batch_size=None) == ["positive"]
    assert len(fake.requests) == 3


def test_always_500_is_an_error_after_retries(fake: Any) -> None:
    backend = fast(fake.url)
    model = backend.load("fake-model")
    fake.requests.clear()
    fake.script = [(500, {"error": {"message": "CUDA out of memory"}}, {})] * 10
    with pytest.raises(BackendError, match=r"kept failing: 3 attempts .* HTTP 500: CUDA out of memory"):
        backend.generate(model, PROMPTS[:1], max_tokens=8, batch_size=None)
    assert len(fake.requests) == 3


def test_429_honours_retry_after(fake: Any) -> None:
    backend = fast(fake.url)
    model = backend.load("fake-model")
    fake.requests.clear()
    fake.script = [(429, {"error": "slow down"}, {"Retry-After": "1"}), fake.ok("neutral")]
    assert backend.generate(model, PROMPTS[:1], max_tokens=8, batch_size=None) == ["neutral"]
    first, second = fake.requests
    assert second["t"] - first["t"] >= 0.95  # the backoff alone would have waited ~1 ms


def test_client_errors_are_not_retried_and_the_key_never_shows(
    fake: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    backend = fast(fake.url)
    model = backend.load("fake-model")
    assert fake.requests[-1]["headers"]["Authorization"] == f"Bearer {SECRET}"
    fake.requests.clear()
    fake.script = [(400, {"error": {"message": f"bad request from key {SECRET}"}}, {})]
    with pytest.raises(BackendError) as info:
        backend.generate(model, PROMPTS[:1], max_tokens=8, batch_size=None)
    assert len(fake.requests) == 1
    assert SECRET not in str(info.value) and "bad request from key ***" in str(info.value)
    fake.script = [(401, {"error": {"message": f"Incorrect API key provided: {SECRET}"}}, {})]
    with pytest.raises(BackendError, match="check the API key in OPENAI_API_KEY") as info:
        backend.generate(model, PROMPTS[:1], max_tokens=8, batch_size=None)
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)


def test_no_authorization_header_without_a_key(fake: Any) -> None:
    OpenAIBackend(fake.url).load("fake-model")
    assert all("Authorization" not in r["headers"] for r in fake.requests)


@pytest.mark.parametrize(
    "answer",
    [
        (200, b"<html>not json</html>", {}),
        (200, {"choices": []}, {}),
        (200, {"choices": [{"text": "a legacy completion"}]}, {}),
    ],
    ids=["not-json", "no-choices", "no-message"],
)
def test_malformed_replies_are_errors(fake: Any, answer: tuple[int, Any, dict[str, str]]) -> None:
    backend = fast(fake.url)
    model = backend.load("fake-model")
    fake.script = [answer]
    with pytest.raises(BackendError, match=f"server {fake.url} answered"):
        backend.generate(model, PROMPTS[:1], max_tokens=8, batch_size=None)


def test_a_retry_goes_to_another_replica(fake: Any) -> None:
    port = fake.url.split(":")[2].split("/")[0]
    backend = fast(f"{fake.url},http://localhost:{port}/v1")  # two names of one server: two replicas
    model = backend.load("fake-model")
    fake.requests.clear()
    fake.script = [(503, {"error": "overloaded"}, {}), fake.ok("positive")]
    assert backend.generate(model, PROMPTS[:1], max_tokens=8, batch_size=None) == ["positive"]
    hosts = [r["headers"]["Host"].split(":")[0] for r in fake.requests]
    assert len(set(hosts)) == 2, hosts


def test_a_server_that_goes_away_mid_run(fake: Any) -> None:
    backend = fast(fake.url)
    model = backend.load("fake-model")
    fake.stop()
    with pytest.raises(BackendError, match=f"server {fake.url} gave no answer after 3 attempts"):
        backend.generate(model, PROMPTS[:3], max_tokens=8, batch_size=None)


def test_unknown_model_lists_what_is_served(fake: Any) -> None:
    with pytest.raises(ModelError) as info:
        OpenAIBackend(fake.url).load("fake-modle")
    message = str(info.value)
    assert "does not serve model 'fake-modle'" in message
    assert "Did you mean 'fake-model'?" in message and "Served: fake-model, fake-model-lora" in message


def test_server_without_a_model_list_is_probed(fake: Any) -> None:
    fake.models = None  # GET /models answers 404; the probe decides
    fake.script = [fake.ok("OK")]
    backend = OpenAIBackend(fake.url)
    model = backend.load("whatever-it-serves")
    assert model.label == "whatever-it-serves"
    fake.script = [(404, {"error": "model 'nope' not found, try pulling it first"}, {})]
    with pytest.raises(ModelError, match="did not list its models"):
        backend.load("nope")


def test_requests_are_bounded_and_ordered(fake: Any) -> None:
    fake.delay = 0.1
    backend = OpenAIBackend(fake.url, concurrency=3)
    model = backend.load("fake-model")
    replies = backend.generate(model, PROMPTS, max_tokens=8, batch_size=None)
    assert replies == [f"echo: {s}" for s in SENTENCES]
    assert 2 <= fake.max_inflight <= 3  # concurrent, and never more than the bound
    body = fake.requests[-1]["body"]
    assert body["temperature"] == 0 and body["seed"] == 0 and body["max_tokens"] == 8
    assert body["chat_template_kwargs"] == {"enable_thinking": False}


def test_fingerprint_ignores_the_url_but_not_the_name(fake: Any) -> None:
    port = fake.url.split(":")[2].split("/")[0]
    a = OpenAIBackend(fake.url).load("fake-model")
    b = OpenAIBackend(f"http://localhost:{port}").load("fake-model")
    c = OpenAIBackend(fake.url).load("fake-model-lora")
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_local_adapter_folders_point_to_served_names(fake: Any, tmp_path: Path) -> None:
    backend = OpenAIBackend(fake.url)
    base = backend.load("fake-model")
    with pytest.raises(AdapterError, match="--lora-modules NAME=.*--ftgate-candidate=NAME"):
        backend.with_adapter(base, str(tmp_path))


def test_pytest_options_reach_the_backend(pytester: pytest.Pytester, fake: Any) -> None:
    """--ftgate-backend=openai --ftgate-base-url=... through the plugin; a served candidate is gated."""
    fake.models = ["org/base", "org/tuned"]  # one slash: the gate's local-folder check lets these through
    fake.answers = {"org/base": "positive", "org/tuned": "negative"}
    rows = "".join(json.dumps({"id": f"s{i}", "q": s, "a": "positive"}) + "\n" for i, s in enumerate(SENTENCES))
    (pytester.path / "rows.jsonl").write_text(rows)
    pytester.makeconftest(
        """
        from pathlib import Path
        import pytest_ftgate

        pytest_ftgate.register_benchmark(pytest_ftgate.Benchmark.from_jsonl(
            "served", Path(__file__).parent / "rows.jsonl", system="One word.", template="{q}", answer="a",
            kind="label", choices=("positive", "negative", "neutral"), max_tokens=4, title="Served",
        ))
        """
    )
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.ftgate("served", max_drop=2.0)
        def test_gate():
            pass
        """
    )
    result = pytester.runpytest(
        "--ftgate-backend=openai",
        f"--ftgate-base-url={fake.url}",
        "--ftgate-base=org/base",
        "--ftgate-candidate=org/tuned",
        f"--ftgate-cache={pytester.path / 'cache'}",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*Served dropped 100.0 points (100.0 -> 0.0)*"])
    assert {r["body"]["model"] for r in fake.requests} == {"org/base", "org/tuned"}


# -- real mlx_lm.server processes ------------------------------------------------------------------

needs_mlx_lm = pytest.mark.skipif(importlib.util.find_spec("mlx_lm") is None, reason="mlx_lm is not installed")


@dataclass
class MLXServer:
    url: str
    log: Path
    process: subprocess.Popen[bytes]

    def posts(self) -> int:
        return self.log.read_text(errors="replace").count('"POST /v1/chat/completions')


def _start(model: Path, root: Path, name: str) -> MLXServer:
    port = free_port()
    log = root / f"{name}.log"
    cache = root / "hf-cache"
    cache.mkdir(exist_ok=True)  # mlx_lm.server's GET /v1/models scans it (an empty 200 when it is missing)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    command = [sys.executable, "-m", "mlx_lm.server", "--model", str(model), "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    return MLXServer(f"http://127.0.0.1:{port}/v1", log, process)


def _wait(server: MLXServer, deadline: float) -> None:
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(server.url + "/models", timeout=2) as answer:
                if json.loads(answer.read())["data"]:
                    return
        except (OSError, ValueError, KeyError):
            time.sleep(0.2)
    server.process.kill()
    pytest.fail(f"mlx_lm.server did not start:\n{server.log.read_text(errors='replace')[-2000:]}")


@pytest.fixture(scope="session")
def served_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from pytest_ftgate.testing import make_tiny_gemma4

    root = tmp_path_factory.mktemp("openai-models")
    return make_tiny_gemma4(root / "tiny-gemma4", seed=0), make_tiny_gemma4(root / "tiny-gemma4-b", seed=1)


@pytest.fixture(scope="session")
def mlx_servers(
    served_models: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[MLXServer]]:
    """Two mlx_lm.server replicas of the tiny Gemma 4, started together."""
    root = tmp_path_factory.mktemp("openai-servers")
    servers = [_start(served_models[0], root, f"replica{i}") for i in range(2)]
    try:
        deadline = time.monotonic() + 60
        for server in servers:
            _wait(server, deadline)
        yield servers
    finally:
        for server in servers:
            server.process.terminate()
        for server in servers:
            try:
                server.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.process.kill()


@pytest.fixture(scope="session")
def served_name(served_models: tuple[Path, Path]) -> str:
    return str(served_models[0].resolve())  # mlx_lm.server lists its --model folder resolved


@needs_mlx_lm
def test_generate_is_greedy_and_matches_the_mlx_backend(mlx_servers: list[MLXServer], served_name: str) -> None:
    backend = OpenAIBackend(mlx_servers[0].url)
    model = backend.load(served_name)
    first = backend.generate(model, PROMPTS[:5], max_tokens=12, batch_size=None)
    again = backend.generate(model, PROMPTS[:5], max_tokens=12, batch_size=None)
    assert len(first) == 5 and all(isinstance(r, str) and r for r in first)
    assert first == again
    one_by_one = [backend.generate(model, [p], max_tokens=12, batch_size=None)[0] for p in PROMPTS[:5]]
    assert one_by_one == first
    if not all(importlib.util.find_spec(m) for m in ("mlx_vlm", "mlx_tune")):
        return  # the mlx backend is not installed: the comparison with it is skipped
    local = create_backend("mlx")
    replies = local.generate(local.load(served_name), PROMPTS[:5], max_tokens=12, batch_size=None)
    # Same tokens; only the detokenizers differ on the random model's stray UTF-8 bytes: mlx_lm's
    # writes U+FFFD for each, mlx-vlm's drops them.
    assert [r.replace("\ufffd", "") for r in replies] == [r.replace("\ufffd", "") for r in first]


@needs_mlx_lm
def test_wrong_model_name_on_mlx_lm_server(mlx_servers: list[MLXServer], served_name: str) -> None:
    backend = OpenAIBackend(mlx_servers[1].url)
    with pytest.raises(ModelError) as info:
        backend.load(served_name + "-typo")
    message = str(info.value)
    assert f"does not serve model '{served_name}-typo'" in message and f"Served: {served_name}" in message
    assert f"Did you mean '{served_name}'?" in message
    # The server still serves its model afterwards.
    assert backend.generate(backend.load(served_name), PROMPTS[:1], max_tokens=4, batch_size=None)


@needs_mlx_lm
def test_replicas_share_the_work(mlx_servers: list[MLXServer], served_name: str) -> None:
    single = OpenAIBackend(mlx_servers[0].url)
    alone = single.load(served_name)
    expected = single.generate(alone, PROMPTS, max_tokens=8, batch_size=None)
    before = [s.posts() for s in mlx_servers]
    both = OpenAIBackend(",".join(s.url for s in mlx_servers), concurrency=2)
    model = both.load(served_name)
    assert model.fingerprint == alone.fingerprint
    assert both.generate(model, PROMPTS, max_tokens=8, batch_size=len(PROMPTS)) == expected
    time.sleep(0.2)  # the server writes its access log line after the reply
    # load() probes each replica once; the 8 prompts spread over both.
    sent = [s.posts() - b - 1 for s, b in zip(mlx_servers, before, strict=True)]
    assert sum(sent) == len(PROMPTS) and min(sent) >= 2, sent


@needs_mlx_lm
def test_gate_compares_a_served_base_and_candidate(
    mlx_servers: list[MLXServer], served_models: tuple[Path, Path], tmp_path: Path
) -> None:
    rows = tmp_path / "sentiment.jsonl"
    labels = ["positive", "negative", "neutral"]
    rows.write_text(
        "".join(json.dumps({"id": f"s{i}", "q": s, "a": labels[i % 3]}) + "\n" for i, s in enumerate(SENTENCES))
    )
    bench = Benchmark.from_jsonl(
        "served-sentiment",
        rows,
        system=SYSTEM,
        template="{q}",
        answer="a",
        kind="label",
        choices=labels,
        max_tokens=6,
    )
    gate = Gate(
        base=str(served_models[0].resolve()),
        candidate=str(served_models[1].resolve()),  # mlx_lm.server loads another folder on demand
        backend="openai",
        base_url=",".join(s.url for s in mlx_servers),
        cache=tmp_path / "cache",
    )
    with pytest.warns(UserWarning, match="does not list model .*tiny-gemma4-b' but answered for it"):
        comparison = gate.compare(bench)  # mlx_lm.server lists only its --model
    assert comparison.base.n == comparison.tuned.n == len(SENTENCES)
    assert comparison.base.model.fingerprint != comparison.tuned.model.fingerprint
    outputs = [p.output for p in comparison.base.predictions]
    assert outputs != [p.output for p in comparison.tuned.predictions]  # another model answers differently

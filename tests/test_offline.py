"""Offline and hub errors (issue 14): with the network blocked, ftgate probes the hub once, puts the
hub clients offline (no retry storm) and says what to pass instead, named for the interface in use:
``data=`` / ``base=`` from ``Gate``, ``--ftgate-data`` / ``--ftgate-base`` from pytest."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from pytest_ftgate import hub, options
from pytest_ftgate.backends import Model
from pytest_ftgate.errors import DataError, ModelError
from pytest_ftgate.gate import Gate

# Put in front of a script or conftest: every connection attempt is counted (in ATTEMPTS, and in
# the file $FTGATE_TEST_ATTEMPTS at exit) and refused, as on a machine without a network.
BLOCK_NETWORK = r"""
import atexit, os, socket
ATTEMPTS = []
def _refuse(address):
    ATTEMPTS.append(str(address))
    raise ConnectionRefusedError(f"network blocked by the test ({address})")
socket.create_connection = lambda address, *args, **kwargs: _refuse(address)
socket.socket.connect = lambda self, address: _refuse(address)
socket.socket.connect_ex = lambda self, address: _refuse(address)
atexit.register(lambda: open(os.environ["FTGATE_TEST_ATTEMPTS"], "w").write(str(len(ATTEMPTS))))
"""


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """No network: HF_ENDPOINT on a closed local port, every connection refused and counted (the
    list returned), an empty hub cache; ftgate's probe answer and the offline mode it sets are
    undone afterwards."""
    monkeypatch.setattr(hub, "_answers", {})
    for name in hub.OFFLINE_SETTINGS:
        monkeypatch.setenv(name, "")  # unset for the clients, restored (or removed) afterwards
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("FTGATE_TEST_ATTEMPTS", str(tmp_path / "attempts"))
    for module, names in (("huggingface_hub.constants", ["HF_HUB_OFFLINE"]), ("datasets.config", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])):
        if module in sys.modules:
            for name in names:
                monkeypatch.setattr(sys.modules[module], name, getattr(sys.modules[module], name))
    attempts: list[str] = []

    def refuse(address: Any, *args: Any, **kwargs: Any) -> Any:
        attempts.append(str(address))
        raise ConnectionRefusedError(f"network blocked by the test ({address})")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: refuse(address))
    return attempts


def offline_now() -> bool:
    return os.environ.get("HF_HUB_OFFLINE") == "1"


def hub_client(attempts_before_giving_up: int = 5) -> Callable[[str], None]:
    """What the hub clients do: in offline mode fail at once; online retry a few times."""

    def fetch(what: str) -> None:
        if offline_now():
            raise ConnectionError(f"Cannot reach {what}: offline mode is enabled")
        host, port = os.environ["HF_ENDPOINT"].rsplit(":", 1)
        for _ in range(attempts_before_giving_up):
            try:
                socket.create_connection((host.split("//")[-1], int(port)), timeout=1)
            except OSError:
                continue
        raise ConnectionError(f"could not reach {what} after {attempts_before_giving_up} tries")

    return fetch


class HubBackend:
    """Loads a model by hub id the way the hub client would: offline, at once, from its cache."""

    name = "hubfake"

    def __init__(self) -> None:
        self.fetch = hub_client()

    def version(self) -> str:
        return "1"

    def load(self, model: str) -> Model:
        try:
            self.fetch(model)
        except ConnectionError as exc:
            raise ModelError(f"could not find model {model} locally or on the hub: ConnectionError: {exc}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def with_adapter(self, base: Model, adapter: str) -> Model:
        raise NotImplementedError

    def generate(self, model: Model, prompts: Sequence[Any], *, max_tokens: int, batch_size: int | None) -> list[str]:
        raise NotImplementedError


# --------------------------------------------------------------------------- the probe


def test_an_offline_setting_is_honoured_without_a_probe(offline: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not hub.reachable() and not hub.prepare()
    assert offline == []
    assert hub.why_unreachable() == "HF_HUB_OFFLINE is set"


def test_one_short_probe_per_process_then_offline_mode(offline: list[str]) -> None:
    assert not hub.reachable()
    assert not hub.prepare() and not hub.reachable()
    assert len(offline) == 1  # asked once, remembered
    assert offline_now()  # the hub clients of this process are offline now: no retries
    assert "did not answer within" in hub.why_unreachable()


# --------------------------------------------------------------------------- benchmark data


def test_data_offline_from_gate_names_the_keyword_without_retries(
    offline: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Before: 29 s of retries, then "... or leave --ftgate-data unset" though it was unset."""
    fetch = hub_client()

    def load_dataset(repo: str, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        fetch(repo)
        raise AssertionError("unreachable")  # pragma: no cover

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    gate = Gate(base=str(tmp_path), backend=HubBackend(), cache=None, progress=False)
    with pytest.raises(DataError) as info:
        gate.examples("fpb")
    message = str(info.value)
    assert "AdaptLLM/finance-tasks (FPB) split 'test' is read from the Hugging Face hub, which cannot be reached" in message
    assert "did not answer within" in message
    assert "not in the local datasets cache: pass data=DIR containing fpb/test.jsonl" in message
    assert "--ftgate" not in message and "unset" not in message
    assert len(offline) == 1  # the probe; the client failed at once
    assert info.value.render(options.option_name).count("--ftgate-data=DIR containing fpb/test.jsonl") == 1


DATA_GATE_TEST = """
import pytest

@pytest.mark.ftgate("fpb", max_drop=2.0)
def test_fpb():
    pass
"""


@pytest.mark.skipif(importlib.util.find_spec("datasets") is None, reason="needs the datasets package")
def test_data_offline_through_pytest_with_the_real_datasets_package(
    offline: list[str], gate_project: pytest.Pytester, fake_adapter: Callable[..., str]
) -> None:
    conftest = gate_project.path / "conftest.py"
    conftest.write_text(BLOCK_NETWORK + conftest.read_text())
    gate_project.makepyfile(DATA_GATE_TEST)
    result = gate_project.runpytest_subprocess(fake_adapter())
    result.assert_outcomes(errors=1)
    output = result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "*ftgate: AdaptLLM/finance-tasks (FPB) split 'test' is read from the Hugging Face hub, which cannot "
            "be reached (http://127.0.0.1:* did not answer within *), and it is not in the local datasets cache: "
            "pass --ftgate-data=DIR containing fpb/test.jsonl*"
        ]
    )
    assert "unset" not in output and "Traceback" not in output
    assert int(Path(os.environ["FTGATE_TEST_ATTEMPTS"]).read_text()) <= 2


# --------------------------------------------------------------------------- the base model


def test_base_offline_from_gate_names_the_keyword_without_retries(offline: list[str]) -> None:
    """Before: 49 s, then "...Check your internet connection.. Check --ftgate-base" from Python."""
    gate = Gate(base="org/model", backend=HubBackend(), cache=None, progress=False)
    with pytest.raises(ModelError) as info:
        gate.base_model
    message = str(info.value)
    assert message.startswith("org/model is a Hugging Face hub id, the hub cannot be reached (http://127.0.0.1:")
    assert "offline mode is enabled" in str(info.value.__cause__)  # what the client said: the cause
    assert message.endswith(
        "the model is not in the local hub cache: pass a local model folder as base=DIR, or download the model once while online "
        "(huggingface-cli download org/model)"
    )
    assert "--ftgate" not in message and ".." not in message
    assert len(offline) == 1


HUB_FAKE = r"""

class HubFake(FakeBackend):
    def load(self, model):
        import os
        if "/" in model and not os.path.exists(model) and os.environ.get("HF_HUB_OFFLINE") == "1":
            raise pytest_ftgate.ModelError(f"could not find model {model} locally or on the hub: offline mode")
        return FakeBackend.load(self, model)

def pytest_ftgate_make_backend(name, config):
    return HubFake() if name == "fake" else None
"""


def test_base_offline_through_pytest_names_the_option(
    offline: list[str], gate_project: pytest.Pytester, fake_adapter: Callable[..., str]
) -> None:
    conftest = gate_project.path / "conftest.py"
    conftest.write_text(conftest.read_text() + HUB_FAKE)
    gate_project.makepyfile(DATA_GATE_TEST.replace('"fpb"', '"sentiment"'))
    result = gate_project.runpytest(fake_adapter(), f"{options.BASE}=org/model")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ftgate: org/model is a Hugging Face hub id, the hub cannot be reached (http://127.0.0.1:* did not "
            "answer within *) and the model is not in the local hub cache: pass a local model folder as "
            "--ftgate-base=DIR, or download the model once while online (huggingface-cli download org/model)"
        ]
    )
    assert len(offline) == 1


SCRIPT = BLOCK_NETWORK + r"""
import json, sys
from pytest_ftgate.errors import ModelError
from pytest_ftgate.gate import Gate

try:
    Gate(base="org/no-such-model", backend="transformers", cache=None, progress=False).base_model
except ModelError as exc:
    print(json.dumps({"message": str(exc), "attempts": len(ATTEMPTS)}))
"""


@pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("torch", "transformers", "peft")),
    reason="torch not installed: pip install torch==2.13.0 -e .[torch]",
)
def test_base_offline_with_the_real_transformers_backend(offline: list[str]) -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=False)
    assert done.stdout.strip(), done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["message"].startswith("org/no-such-model is a Hugging Face hub id, the hub cannot be reached")
    assert "pass a local model folder as base=DIR" in seen["message"]
    assert "--ftgate" not in seen["message"] and ".." not in seen["message"]
    assert seen["attempts"] <= 2

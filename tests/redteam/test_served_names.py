"""Red team: served model names reach the server exactly as given.

vLLM (``--lora-modules NAME=PATH``) and Ollama serve models under single-word names. ftgate used to
resolve ``--ftgate-base=base`` as a path (``<cwd>/base``): a server that answers for any name then
compared a model with itself. Here the real ``openai`` backend talks to a small OpenAI-compatible
server on 127.0.0.1 that serves only ``base`` and ``cand``, in a project that even holds a folder
named ``base``."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from pytest_ftgate import options

SERVED = ("base", "cand")


class Recorder:
    """What the server was asked for: the ``model`` of every request."""

    def __init__(self) -> None:
        self.models: list[str] = []
        self.lock = threading.Lock()
        self.url = ""


def _handler(recorder: Recorder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/v1/models":
                data = [{"id": name, "object": "model", "owned_by": "test"} for name in SERVED]
                self._send(200, {"object": "list", "data": data})
            else:
                self._send(404, {"error": "Not Found"})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with recorder.lock:
                recorder.models.append(body.get("model"))
            if body.get("model") not in SERVED:
                self._send(404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}})
                return
            found = re.search(r"answer: (\w+)", body["messages"][-1]["content"])
            text = found.group(1) if found else "neutral"
            self._send(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]})

    return Handler


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    """An OpenAI-compatible server on 127.0.0.1 serving ``base`` and ``cand`` (both answer right)."""
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    recorder = Recorder()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(recorder))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    recorder.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    try:
        yield recorder
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_served_names_are_sent_verbatim(gate_project: pytest.Pytester, server: Recorder) -> None:
    gate_project.makepyfile(
        """
        import pytest

        @pytest.mark.ftgate("sentiment", max_drop=2.0)
        def test_gate():
            pass
        """
    )
    assert (gate_project.path / "base").is_dir()  # a folder of that name must not turn it into a path
    result = gate_project.runpytest(
        "-p",
        "no:syrupy",
        "-p",
        "no:randomly",
        f"{options.BACKEND}=openai",
        f"{options.BASE}=base",
        f"{options.CANDIDATE}=cand",
        f"{options.BASE_URL}={server.url}",
    )
    result.assert_outcomes(passed=1)
    assert set(server.models) == set(SERVED), set(server.models)
    assert server.models.count("base") >= 40 and server.models.count("cand") >= 40


def test_settings_keep_served_names(gate_project: pytest.Pytester) -> None:
    """The same rule where the settings are built: served names stay names, local ones become paths."""
    config = gate_project.parseconfig(f"{options.BACKEND}=openai", f"{options.BASE}=base", f"{options.CANDIDATE}=cand")
    settings = options.read_settings(config)
    assert (settings.base, settings.candidate) == ("base", "cand")
    local = options.read_settings(gate_project.parseconfig(f"{options.BASE}=base"))
    assert local.base == str(gate_project.path / "base")

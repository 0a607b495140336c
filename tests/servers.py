"""A scripted OpenAI-compatible chat server on 127.0.0.1, for the openai backend's tests.

Reached only through the ``openai_server`` fixture (tests/conftest.py): ``FakeServer`` answers
``POST /v1/chat/completions`` from ``script`` (then with an echo of the user message, or the fixed
reply in ``answers``), lists ``models`` at ``GET /v1/models`` (None: no list), and records every
request. ``FakeServer.ok(text)`` is a scripted success.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = tuple[int, Any, dict[str, str]]


@dataclass
class FakeServer:
    """Answers POST /v1/chat/completions from ``script`` (then with an echo of the user message)."""

    models: list[str] | None = field(default_factory=lambda: ["fake-model", "fake-model-lora"])
    script: list[Answer] = field(default_factory=list)
    delay: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    inflight: int = 0
    max_inflight: int = 0
    answers: dict[str, str] = field(default_factory=dict)  # model -> fixed reply (else an echo)
    url: str = ""
    stop: Callable[[], None] = lambda: None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @staticmethod
    def ok(text: str) -> Answer:
        return 200, {"choices": [{"message": {"role": "assistant", "content": text}}]}, {}

    def reply(self, body: dict[str, Any]) -> Answer:
        with self.lock:
            if self.script:
                return self.script.pop(0)
        if self.models is not None and body.get("model") not in self.models:
            return 404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}}, {}
        text = self.answers.get(body["model"]) or "echo: " + body["messages"][-1]["content"]
        return 200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}, {}


def _handler(fake: FakeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, payload: Any, headers: dict[str, str]) -> None:
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/v1/models" and fake.models is not None:
                data = [
                    {"id": m, "object": "model", "owned_by": "fake", "created": int(time.time())} for m in fake.models
                ]
                self._send(200, {"object": "list", "data": data}, {})
            else:
                self._send(404, {"error": "Not Found"}, {})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with fake.lock:
                fake.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body, "t": time.monotonic()}
                )
                fake.inflight += 1
                fake.max_inflight = max(fake.max_inflight, fake.inflight)
            try:
                time.sleep(fake.delay)
                reply = fake.reply(body)
            finally:
                # out of flight before the reply is written: once the client has it, it may send
                # its next request, which must not find this one still counted
                with fake.lock:
                    fake.inflight -= 1
            self._send(*reply)

    return Handler


@contextmanager
def serve() -> Iterator[FakeServer]:
    """A running ``FakeServer`` (its ``stop()`` ends it early; it ends anyway on leaving)."""
    server = FakeServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(server))
    httpd.daemon_threads = True
    server.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    stopped = threading.Event()

    def stop() -> None:
        if not stopped.is_set():
            stopped.set()
            httpd.shutdown()
            httpd.server_close()

    server.stop = stop
    try:
        yield server
    finally:
        stop()

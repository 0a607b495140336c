"""The ``openai`` backend: any OpenAI-compatible chat-completions server.

vLLM, Ollama (``http://127.0.0.1:11434/v1``), llama.cpp's ``llama-server``, ``mlx_lm.server``, LM
Studio, or a hosted API. Only the standard library is used (``urllib.request`` and a bounded thread
pool), so the ``openai`` extra installs nothing.

Configuration
    - Server: ``--ftgate-base-url`` (ini ``ftgate_base_url``), else ``$OPENAI_BASE_URL``. With or
      without the ``/v1`` suffix (``http://127.0.0.1:8000`` means ``http://127.0.0.1:8000/v1``).
      A comma-separated list of URLs names replicas of one deployment: each request goes to the
      least busy replica (ties in turn), and a retried request prefers another replica.
    - API key: only ``$OPENAI_API_KEY``, sent as ``Authorization: Bearer ...`` when set. It is never
      printed: it is masked in every message this backend raises, server messages included.
    - Constructor keywords (or ``FTGATE_OPENAI_<NAME>`` environment variables, since the pytest
      options pass only the URL): ``concurrency`` requests in flight per replica (8), ``timeout``
      seconds per request (120), ``retries`` after the first attempt (4), ``backoff`` seconds before
      the first retry (0.5, doubled each time, with jitter, at most ``max_wait`` = 60). Retried:
      429, 408 and 5xx answers, refused or dropped connections and timeouts; a ``Retry-After``
      header is honoured (up to ``max_wait``). ``seed`` (0; ``None`` leaves it out) is sent with
      ``temperature: 0``; mlx_lm.server batches only requests without a seed, so ``seed=None``
      is faster there (greedy answers were the same in our tests). ``chat_template_kwargs``
      (default ``{"enable_thinking": False}``, the seed study's prompts; vLLM, llama.cpp and
      mlx_lm.server read it, and mlx_lm.server otherwise turns Gemma 4's thinking on) is dropped,
      with a note, when a server refuses it. In-flight requests are also bounded by the runner's
      batch (``--ftgate-batch-size``, default 8): raise it to keep several replicas busy.

Models are served model NAMES: ``--ftgate-base=NAME`` and ``--ftgate-candidate=NAME``. ``load``
checks that every replica answers and serves the name: a name missing from ``GET /models`` is
probed with a one-token completion (``mlx_lm.server`` lists only its ``--model`` path, resolved,
and loads other names on demand), and a name the server refuses is a ``ModelError`` that lists
what it serves. A name a server does not list but answers for anyway is accepted with a warning
(llama.cpp's server answers for any name with its one model).

Adapters: a server cannot take a local adapter folder. Serve the adapter under a name (vLLM:
``vllm serve BASE --enable-lora --lora-modules NAME=PATH``) and gate that name as a candidate,
``--ftgate-candidate=NAME``: base and candidate are then compared exactly like base and adapter.
``with_adapter`` raises an ``AdapterError`` that says so.

Fingerprints are weaker than for local backends: a served model cannot be hashed by its weights.
The fingerprint covers the backend name, the model name, what ``GET /models`` reports about it
(``id``, ``owned_by``, ``root``, ``parent``, ``max_model_len``; not ``created``, which servers
fill with the time of the request) and the servers' ``system_fingerprint``. It does not depend on
the URL, so replicas and moved servers share cached predictions. Redeploying other weights under
the same name is invisible to it: use a new name, or ``--ftgate-no-cache``.

Scoring: ``generate`` only (one greedy chat completion per prompt). There is no ``score``: chat
completions cannot score a given reply, so the runner's ``logprob`` mode is refused for this
backend (``capabilities.logprob`` is False). Stop rules are not sent: a server decodes each reply
to its end. HTTP, replicas and retries: ``openai_http.py``.
"""

from __future__ import annotations

import difflib
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_ftgate.backends import Backend, Capabilities, Message, Model, Prompts, StopRule
from pytest_ftgate.backends.openai_http import BASE_URL_ENV, Client, Failure, Replica, normalize_urls, server_message
from pytest_ftgate.errors import AdapterError, BackendError, ModelError
from pytest_ftgate.fingerprint import digest

# Connecting to a server at load time should fail fast; requests themselves get ``timeout``.
CHECK_TIMEOUT = 10.0
# Reported facts of a served model that identify what it answers with (``created`` is left out:
# vLLM and mlx_lm.server fill it with the time of the request).
IDENTITY_KEYS = ("id", "owned_by", "root", "parent", "max_model_len")
# Sent as ``chat_template_kwargs`` (vLLM, llama.cpp, mlx_lm.server read it): the seed study's prompts
# have no thinking turn, but mlx_lm.server enables thinking for Gemma 4 unless told otherwise.
_NO_THINKING: dict[str, Any] = {"enable_thinking": False}
CHECK_PROMPT: list[Message] = [{"role": "user", "content": "Say OK."}]  # the served-name check


@dataclass
class _Served:
    """``Model.handle`` of a served model: the name requests carry and what the servers reported."""

    name: str
    listed: dict[str, Any] | None  # its GET /models entry (first replica that lists it)
    system_fingerprints: list[str] = field(default_factory=list)


class OpenAIBackend(Backend):
    """Backend over an OpenAI-compatible server (or several replicas of one). See the module docstring."""

    name = "openai"
    capabilities = Capabilities(remote=True)  # models are served names, not local folders or hub ids

    def __init__(
        self,
        base_url: str | Sequence[str] | None = None,
        *,
        concurrency: int | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        backoff: float | None = None,
        max_wait: float | None = None,
        seed: int | None = 0,
        chat_template_kwargs: dict[str, Any] | None = _NO_THINKING,
        **options: Any,
    ) -> None:
        self.options = options
        raw = base_url if base_url not in (None, "") else os.environ.get(BASE_URL_ENV, "")
        urls = normalize_urls(raw)
        if not urls:
            raise BackendError(
                "the openai backend needs a server: pass --ftgate-base-url=http://127.0.0.1:8000/v1 "
                f"or set {BASE_URL_ENV}"
            )
        self.http = Client(
            urls, concurrency=concurrency, timeout=timeout, retries=retries, backoff=backoff, max_wait=max_wait
        )
        self.seed = seed
        self.chat_template_kwargs = dict(chat_template_kwargs) if chat_template_kwargs else None
        self.notes: list[str] = []

    @property
    def replicas(self) -> list[Replica]:
        return self.http.replicas

    @property
    def concurrency(self) -> int:
        return self.http.concurrency

    @property
    def timeout(self) -> float:
        return self.http.timeout

    @property
    def base_url(self) -> str:
        return ",".join(r.url for r in self.replicas)

    def version(self) -> str:
        return "openai-compatible (stdlib http)"

    def __repr__(self) -> str:
        return f"OpenAIBackend(base_url={self.base_url!r})"

    # -- loading -----------------------------------------------------------------------------

    def load(self, model: str) -> Model:
        """Check that every replica answers and serves ``model`` (a served name); no weights move."""
        name = str(model).strip()
        if not name:
            raise ModelError("the openai backend needs a served model name: pass --ftgate-base=NAME")
        served = _Served(name=name, listed=None)
        for replica in self.replicas:
            listing = self._list_models(replica)
            ids = [str(entry.get("id")) for entry in listing or []]
            if listing and name in ids and served.listed is None:
                served.listed = listing[ids.index(name)]
            fingerprint = self._check_name(replica, name, ids if listing is not None else None)
            if fingerprint:
                served.system_fingerprints.append(fingerprint)
            if listing and name not in ids:
                warnings.warn(
                    f"openai backend: server {replica.url} does not list model {name!r} but answered for it "
                    f"(it lists {_names(ids)}); check the name: some servers (llama.cpp) answer for any name",
                    UserWarning,
                    stacklevel=2,
                )
        served.system_fingerprints = sorted(set(served.system_fingerprints))
        identity = {k: served.listed.get(k) for k in IDENTITY_KEYS} if served.listed else None
        fingerprint = digest(
            {
                "backend": self.name,
                "model": name,
                "served": identity,
                "system_fingerprint": served.system_fingerprints,
                "chat_template_kwargs": self.chat_template_kwargs,
            }
        )
        return Model(label=name, fingerprint=fingerprint, backend=self, handle=served)

    def with_adapter(self, base: Model, adapter: str) -> Model:
        raise AdapterError(
            f"the openai backend cannot inject the local adapter {adapter} into {base.label!r} on "
            f"{self.base_url}: a server applies adapters itself. Serve it under a name (vLLM: "
            f"vllm serve BASE --enable-lora --lora-modules NAME={adapter}) and gate that name with "
            "--ftgate-candidate=NAME instead of --ftgate-adapter"
        )

    def _list_models(self, replica: Replica) -> list[dict[str, Any]] | None:
        """``GET /models`` entries; None when the server gives no usable list. Unreachable: BackendError."""
        try:
            status, _, body = self.http.send(replica.url, "GET", "/models", None, min(self.timeout, CHECK_TIMEOUT))
        except Failure as exc:
            raise self.http.unreachable(exc) from None
        if status in (401, 403):
            raise self.http.auth_error(replica.url, status, body)
        if status != 200:
            return None
        try:
            data = json.loads(body)["data"]
        except (ValueError, KeyError, TypeError):
            return None  # mlx_lm.server answers 200 with an empty body when it has no hub cache
        if not isinstance(data, list):
            return None
        return [entry for entry in data if isinstance(entry, dict) and "id" in entry]

    def _check_name(self, replica: Replica, name: str, ids: list[str] | None) -> str | None:
        """A one-token completion for ``name`` on ``replica``; returns its ``system_fingerprint``."""
        body = self._body(name, CHECK_PROMPT, max_tokens=1)
        try:
            status, _, raw = self.http.send(replica.url, "POST", "/chat/completions", body, self.timeout)
        except Failure as exc:
            raise self.http.unreachable(exc) from None
        if status in (401, 403):
            raise self.http.auth_error(replica.url, status, raw)
        if status == 400 and self.chat_template_kwargs and "chat_template_kwargs" in server_message(raw):
            # A strict server (the OpenAI API itself) refuses the extension: its own template decides.
            self.notes.append(
                f"openai backend: {replica.url} does not take chat_template_kwargs; its chat template's "
                "defaults apply (thinking may be on)"
            )
            self.chat_template_kwargs = None
            return self._check_name(replica, name, ids)
        if 400 <= status < 500 and status not in (408, 429):
            listed = f"Served: {_names(ids)}" if ids else "The server did not list its models (GET /models)"
            hint = difflib.get_close_matches(name, ids or [], n=1, cutoff=0.5)
            did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
            raise ModelError(
                f"server {replica.url} does not serve model {name!r} (HTTP {status}: "
                f"{self.http.mask(server_message(raw))}).{did_you_mean} {listed}. "
                "Pass a served name with --ftgate-base / --ftgate-candidate"
            )
        if status != 200:
            # A busy or failing server: go through the retry policy once the name is known to be fine.
            data = self.http.post("/chat/completions", body, only=replica)
        else:
            data = self.http.json_body(replica.url, raw)
        self._reply_text(replica.url, data)
        fingerprint = data.get("system_fingerprint")
        return str(fingerprint) if fingerprint else None

    # -- inference ---------------------------------------------------------------------------

    def generate(
        self, model: Model, prompts: Prompts, *, max_tokens: int, batch_size: int | None, stop: StopRule | None = None
    ) -> list[str]:
        """One greedy chat completion per prompt, ``concurrency`` per replica at once, in order."""
        served = self._served(model)
        bodies = [self._body(served.name, messages, max_tokens=max_tokens) for messages in prompts]
        datas = self.http.post_all(bodies)
        return [self._reply_text(url, data) for url, data in datas]

    def _served(self, model: Model) -> _Served:
        if not isinstance(model.handle, _Served):
            raise BackendError(f"{model.label!r} was not loaded by the openai backend: load it with this backend")
        return model.handle

    def _body(self, name: str, messages: Sequence[Message], *, max_tokens: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": name,
            "messages": [dict(m) for m in messages],
            "max_tokens": int(max_tokens),
            "temperature": 0.0,
            "stream": False,
        }
        if self.seed is not None:
            body["seed"] = self.seed
        if self.chat_template_kwargs:
            body["chat_template_kwargs"] = dict(self.chat_template_kwargs)
        return body

    def _reply_text(self, url: str, data: dict[str, Any]) -> str:
        """``choices[0].message.content`` (an empty reply may come as null); anything else is malformed."""
        try:
            content = data["choices"][0]["message"].get("content")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise BackendError(
                f"server {url} answered without choices[0].message: {self.http.mask(json.dumps(data)[:200])}. "
                "Is it an OpenAI-compatible chat completions API?"
            ) from None
        if content is None:
            return ""
        if not isinstance(content, str):
            raise BackendError(f"server {url} answered with non-text content {self.http.mask(repr(content)[:100])}")
        return content

# -- helpers -------------------------------------------------------------------------------------


def _names(ids: Sequence[str] | None) -> str:
    if not ids:
        return "(none)"
    shown = ", ".join(ids[:20])
    return shown + (f" and {len(ids) - 20} more" if len(ids) > 20 else "")

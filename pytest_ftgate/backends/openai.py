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
backend. Servers that return ``logprobs`` allow ``choice_logprobs`` (the first reply token's
log-probability for each choice, from ``top_logprobs``; not used by the runner);
``supports_logprobs`` tells, and ``notes`` records why not, for the report.
"""

from __future__ import annotations

import concurrent.futures
import difflib
import email.utils
import http.client
import json
import math
import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pytest_ftgate.backends import Message, Model
from pytest_ftgate.errors import AdapterError, BackendError, ConfigError, ModelError
from pytest_ftgate.fingerprint import digest

BASE_URL_ENV = "OPENAI_BASE_URL"
API_KEY_ENV = "OPENAI_API_KEY"
ENV_PREFIX = "FTGATE_OPENAI_"
DEFAULTS: dict[str, float] = {
    "concurrency": 8,
    "timeout": 120.0,
    "retries": 4,
    "backoff": 0.5,
    "max_wait": 60.0,
}
# Connecting to a server at load time should fail fast; requests themselves get ``timeout``.
CHECK_TIMEOUT = 10.0
# Reported facts of a served model that identify what it answers with (``created`` is left out:
# vLLM and mlx_lm.server fill it with the time of the request).
IDENTITY_KEYS = ("id", "owned_by", "root", "parent", "max_model_len")
# Sent as ``chat_template_kwargs`` (vLLM, llama.cpp, mlx_lm.server read it): the seed study's prompts
# have no thinking turn, but mlx_lm.server enables thinking for Gemma 4 unless told otherwise.
_NO_THINKING: dict[str, Any] = {"enable_thinking": False}
PROBE: list[Message] = [{"role": "user", "content": "Say OK."}]
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class _Replica:
    """One server URL and how many requests are in flight to it."""

    url: str
    inflight: int = 0
    sent: int = 0


@dataclass
class _Served:
    """``Model.handle`` of a served model: the name requests carry and what the servers reported."""

    name: str
    listed: dict[str, Any] | None  # its GET /models entry (first replica that lists it)
    system_fingerprints: list[str] = field(default_factory=list)
    logprobs: bool | None = None  # None: not probed yet


class _Failure(Exception):
    """One failed attempt: an HTTP status (None: no answer), the server's message, Retry-After."""

    def __init__(self, url: str, status: int | None, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.message = message
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status in (408, 429) or self.status >= 500

    def describe(self) -> str:
        if self.status is None:
            return f"no answer ({self.message})"
        return f"HTTP {self.status}: {self.message}"


class OpenAIBackend:
    """Backend over an OpenAI-compatible server (or several replicas of one). See the module docstring."""

    name = "openai"
    remote = True  # models are served names, not local folders or hub ids

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
        self.replicas = [_Replica(url) for url in urls]
        self.concurrency = int(_setting("concurrency", concurrency, minimum=1))
        self.timeout = _setting("timeout", timeout, minimum=0.001)
        self.retries = int(_setting("retries", retries, minimum=0))
        self.backoff = _setting("backoff", backoff, minimum=0.0)
        self.max_wait = _setting("max_wait", max_wait, minimum=0.0)
        self.seed = seed
        self.chat_template_kwargs = dict(chat_template_kwargs) if chat_template_kwargs else None
        self.notes: list[str] = []
        self._lock = threading.Lock()
        self._turn = 0
        self._random = random.Random()

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
            fingerprint = self._probe(replica, name, ids if listing is not None else None)
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

    def _list_models(self, replica: _Replica) -> list[dict[str, Any]] | None:
        """``GET /models`` entries; None when the server gives no usable list. Unreachable: BackendError."""
        try:
            status, _, body = self._send(replica.url, "GET", "/models", None, min(self.timeout, CHECK_TIMEOUT))
        except _Failure as exc:
            raise self._unreachable(exc) from None
        if status in (401, 403):
            raise self._auth_error(replica.url, status, body)
        if status != 200:
            return None
        try:
            data = json.loads(body)["data"]
        except (ValueError, KeyError, TypeError):
            return None  # mlx_lm.server answers 200 with an empty body when it has no hub cache
        if not isinstance(data, list):
            return None
        return [entry for entry in data if isinstance(entry, dict) and "id" in entry]

    def _probe(self, replica: _Replica, name: str, ids: list[str] | None) -> str | None:
        """A one-token completion for ``name`` on ``replica``; returns its ``system_fingerprint``."""
        body = self._body(name, PROBE, max_tokens=1)
        try:
            status, _, raw = self._send(replica.url, "POST", "/chat/completions", body, self.timeout)
        except _Failure as exc:
            raise self._unreachable(exc) from None
        if status in (401, 403):
            raise self._auth_error(replica.url, status, raw)
        if status == 400 and self.chat_template_kwargs and "chat_template_kwargs" in _server_message(raw):
            # A strict server (the OpenAI API itself) refuses the extension: its own template decides.
            self.notes.append(
                f"openai backend: {replica.url} does not take chat_template_kwargs; its chat template's "
                "defaults apply (thinking may be on)"
            )
            self.chat_template_kwargs = None
            return self._probe(replica, name, ids)
        if 400 <= status < 500 and status not in (408, 429):
            listed = f"Served: {_names(ids)}" if ids else "The server did not list its models (GET /models)"
            hint = difflib.get_close_matches(name, ids or [], n=1, cutoff=0.5)
            did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
            raise ModelError(
                f"server {replica.url} does not serve model {name!r} (HTTP {status}: "
                f"{self._mask(_server_message(raw))}).{did_you_mean} {listed}. "
                "Pass a served name with --ftgate-base / --ftgate-candidate"
            )
        if status != 200:
            # A busy or failing server: go through the retry policy once the name is known to be fine.
            data = self._post("/chat/completions", body, only=replica)
        else:
            data = self._json(replica.url, raw)
        self._reply_text(replica.url, data)
        fingerprint = data.get("system_fingerprint")
        return str(fingerprint) if fingerprint else None

    # -- inference ---------------------------------------------------------------------------

    def generate(
        self,
        model: Model,
        prompts: Sequence[Sequence[Message]],
        *,
        max_tokens: int,
        batch_size: int | None,
        stop: Callable[[str], bool] | None = None,
    ) -> list[str]:
        """One greedy chat completion per prompt, ``concurrency`` per replica at once, in order."""
        served = self._served(model)
        bodies = [self._body(served.name, messages, max_tokens=max_tokens) for messages in prompts]
        datas = self._post_all(bodies)
        return [self._reply_text(url, data) for url, data in datas]

    def supports_logprobs(self, model: Model) -> bool:
        """Whether the server returns ``top_logprobs`` for ``model`` (probed once; recorded in ``notes``)."""
        served = self._served(model)
        if served.logprobs is None:
            body = self._body(served.name, PROBE, max_tokens=1)
            body.update(logprobs=True, top_logprobs=5)
            try:
                _, data = self._post_all([body])[0]
                served.logprobs = bool(_top_logprobs(data))
            except BackendError:
                served.logprobs = False
            if not served.logprobs:
                self.notes.append(
                    f"openai backend: {self.base_url} returns no logprobs for {served.name!r}; generate mode is used"
                )
        return served.logprobs

    def choice_logprobs(
        self, model: Model, prompts: Sequence[Sequence[Message]], choices: Sequence[str], *, top_k: int = 10
    ) -> list[dict[str, float]]:
        """For each prompt, the log-probability of each choice's first token at the reply's first position.

        Exact for choices whose first tokens differ and are in the server's ``top_logprobs`` (single
        letters, one-token labels). A choice not among the top ``top_k`` gets ``-inf``; a token that
        begins several choices counts for none of them (it does not decide between them).
        """
        served = self._served(model)
        if not self.supports_logprobs(model):
            raise BackendError(f"{self.base_url} returns no logprobs for {served.name!r}: use generate mode")
        bodies = []
        for messages in prompts:
            body = self._body(served.name, messages, max_tokens=1)
            body.update(logprobs=True, top_logprobs=top_k)
            bodies.append(body)
        results = []
        for _, data in self._post_all(bodies):
            top = _top_logprobs(data)
            scores = {choice: -math.inf for choice in choices}
            for token, logprob in top:
                piece = _token_text(token).strip().lower()
                if not piece:
                    continue
                matches = [c for c in choices if c.lower().startswith(piece)]
                if len(matches) == 1:
                    scores[matches[0]] = max(scores[matches[0]], logprob)
            results.append(scores)
        return results

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

    # -- transport ---------------------------------------------------------------------------

    def _post_all(self, bodies: Sequence[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
        """POST every body to /chat/completions through a bounded pool; answers in order.

        The first failure cancels the requests not yet sent and is raised.
        """
        if not bodies:
            return []
        workers = min(len(bodies), self.concurrency * len(self.replicas))
        if workers == 1:
            return [self._post_with_url("/chat/completions", body) for body in bodies]
        stop = threading.Event()
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ftgate-openai")
        try:
            futures = [pool.submit(self._post_with_url, "/chat/completions", body, stop=stop) for body in bodies]
            done, _ = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
            for future in futures:
                error = future.exception() if future in done else None
                if error is not None:
                    raise error
            return [future.result() for future in futures]
        finally:
            stop.set()  # requests in flight finish; none is retried or started after a failure
            pool.shutdown(wait=True, cancel_futures=True)

    def _post(self, path: str, body: dict[str, Any], only: _Replica | None = None) -> dict[str, Any]:
        return self._post_with_url(path, body, only=only)[1]

    def _post_with_url(
        self,
        path: str,
        body: dict[str, Any],
        only: _Replica | None = None,
        stop: threading.Event | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """POST with retries (429, 408, 5xx, no answer), exponential backoff with jitter, Retry-After.

        ``stop`` (set when a sibling request failed) ends the retries early.
        """
        failures: list[_Failure] = []
        avoid: _Replica | None = None
        for attempt in range(self.retries + 1):
            if stop is not None and stop.is_set() and failures:
                break
            replica = only or self._acquire(avoid)
            try:
                status, headers, raw = self._send(replica.url, "POST", path, body, self.timeout)
            except _Failure as exc:
                failure = exc
            else:
                if 200 <= status < 300:
                    return replica.url, self._json(replica.url, raw)
                if status in (401, 403):
                    raise self._auth_error(replica.url, status, raw)
                failure = _Failure(replica.url, status, self._mask(_server_message(raw)), _retry_after(headers))
                if not failure.retryable:
                    raise BackendError(
                        f"server {replica.url} refused a {path} request for model {body.get('model')!r} "
                        f"with {failure.describe()}"
                    )
            finally:
                if only is None:
                    self._release(replica)
            failures.append(failure)
            avoid = replica
            if attempt < self.retries:
                delay = self._delay(attempt, failure.retry_after)
                if stop is not None:
                    stop.wait(delay)
                else:
                    time.sleep(delay)
        last = failures[-1]
        if last.status is None and all(f.status is None for f in failures):
            raise BackendError(
                f"{self._where(failures)} gave no answer after {len(failures)} attempts "
                f"(last: {last.message}): check that it is running and reachable, or fix --ftgate-base-url / "
                f"{BASE_URL_ENV}"
            )
        raise BackendError(
            f"{self._where(failures)} kept failing: {len(failures)} attempts for model "
            f"{body.get('model')!r}, last {last.describe()}. Check the server's log; raise retries with "
            f"{ENV_PREFIX}RETRIES if it is only overloaded"
        )

    def _where(self, failures: Sequence[_Failure]) -> str:
        urls = list(dict.fromkeys(f.url for f in failures))
        return f"server {urls[0]}" if len(urls) == 1 else "servers " + ", ".join(urls)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_wait)
        delay = self.backoff * (2.0**attempt) * (0.5 + self._random.random())
        return min(delay, self.max_wait)

    def _acquire(self, avoid: _Replica | None) -> _Replica:
        """The least busy replica (ties in turn), preferring one other than ``avoid``."""
        with self._lock:
            n = len(self.replicas)
            order = [self.replicas[(self._turn + i) % n] for i in range(n)]
            candidates = [r for r in order if r is not avoid] or order
            replica = min(candidates, key=lambda r: r.inflight)
            self._turn = (self.replicas.index(replica) + 1) % n
            replica.inflight += 1
            replica.sent += 1
            return replica

    def _release(self, replica: _Replica) -> None:
        with self._lock:
            replica.inflight -= 1

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "pytest-ftgate"}
        key = os.environ.get(API_KEY_ENV)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _send(
        self, url: str, method: str, path: str, body: dict[str, Any] | None, timeout: float
    ) -> tuple[int, Any, bytes]:
        """One HTTP exchange: (status, headers, body) for any HTTP answer; ``_Failure`` when none came."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url + path, data=data, method=method, headers=self._headers())
        try:
            with _opener(url).open(request, timeout=timeout) as response:
                return response.status, response.headers, response.read()
        except urllib.error.HTTPError as exc:
            try:
                raw = exc.read()
            except (OSError, http.client.HTTPException):
                raw = b""
            return exc.code, exc.headers, raw
        except urllib.error.URLError as exc:
            raise _Failure(url, None, self._mask(str(exc.reason))) from None
        except TimeoutError:
            raise _Failure(url, None, f"timed out after {timeout:g} s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise _Failure(url, None, self._mask(f"{type(exc).__name__}: {exc}")) from None

    def _json(self, url: str, raw: bytes) -> dict[str, Any]:
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            snippet = self._mask(raw[:200].decode("utf-8", "replace"))
            raise BackendError(
                f"server {url} answered with malformed JSON: {snippet!r}. Is it an OpenAI-compatible API?"
            )
        return data

    def _reply_text(self, url: str, data: dict[str, Any]) -> str:
        """``choices[0].message.content`` (an empty reply may come as null); anything else is malformed."""
        try:
            content = data["choices"][0]["message"].get("content")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise BackendError(
                f"server {url} answered without choices[0].message: {self._mask(json.dumps(data)[:200])}. "
                "Is it an OpenAI-compatible chat completions API?"
            ) from None
        if content is None:
            return ""
        if not isinstance(content, str):
            raise BackendError(f"server {url} answered with non-text content {self._mask(repr(content)[:100])}")
        return content

    def _unreachable(self, failure: _Failure) -> BackendError:
        return BackendError(
            f"cannot reach the openai backend's server {failure.url} ({failure.message}): start the server, "
            f"or point --ftgate-base-url / {BASE_URL_ENV} at it (e.g. http://127.0.0.1:8000/v1)"
        )

    def _auth_error(self, url: str, status: int, raw: bytes) -> BackendError:
        has_key = "is set" if os.environ.get(API_KEY_ENV) else "is not set"
        return BackendError(
            f"server {url} refused the request (HTTP {status}: {self._mask(_server_message(raw))}): "
            f"check the API key in {API_KEY_ENV} (it {has_key})"
        )

    def _mask(self, text: str) -> str:
        key = os.environ.get(API_KEY_ENV)
        return text.replace(key, "***") if key else text


# -- helpers -------------------------------------------------------------------------------------


def normalize_urls(raw: str | Sequence[str] | None) -> list[str]:
    """Comma-separated (or listed) base URLs, each ending in its API root (``/v1`` added to a bare host)."""
    if raw is None:
        return []
    parts = raw.split(",") if isinstance(raw, str) else [str(p) for p in raw]
    urls = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        parsed = urllib.parse.urlsplit(part)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(
                f"--ftgate-base-url {part!r} is not an http(s) URL: write it like http://127.0.0.1:8000/v1"
            )
        path = parsed.path.rstrip("/")
        for suffix in ("/chat/completions", "/completions", "/models"):
            path = path.removesuffix(suffix)
        if not path:
            path = "/v1"
        url = urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, path, "", ""))
        if url not in urls:
            urls.append(url)
    return urls


def _setting(name: str, value: float | None, *, minimum: float) -> float:
    source = "keyword"
    if value is None:
        env = os.environ.get(ENV_PREFIX + name.upper())
        if env is None or env.strip() == "":
            return DEFAULTS[name]
        source = f"{ENV_PREFIX}{name.upper()}"
        try:
            value = float(env)
        except ValueError:
            raise ConfigError(f"{source}={env!r} is not a number") from None
    if value < minimum:
        raise ConfigError(f"openai backend {name} ({source}) must be at least {minimum:g}, got {value}")
    return float(value)


_OPENERS: dict[bool, urllib.request.OpenerDirector] = {}


def _opener(url: str) -> urllib.request.OpenerDirector:
    """Loopback servers bypass any HTTP(S)_PROXY; other URLs use the environment's proxies."""
    local = (urllib.parse.urlsplit(url).hostname or "") in _LOOPBACK
    if local not in _OPENERS:
        _OPENERS[local] = (
            urllib.request.build_opener(urllib.request.ProxyHandler({})) if local else urllib.request.build_opener()
        )
    return _OPENERS[local]


def _retry_after(headers: Any) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None when absent."""
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def _server_message(raw: bytes) -> str:
    """The error text of an answer: OpenAI ``{"error": {"message"}}``, ``{"error": str}``, ``{"detail"}``..."""
    text = raw.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:300] or "(empty answer)"
    if isinstance(data, dict):
        for key in ("error", "detail", "message"):
            value = data.get(key)
            if isinstance(value, dict):
                value = value.get("message") or json.dumps(value)
            if value:
                return str(value)[:300]
    return text[:300]


def _top_logprobs(data: dict[str, Any]) -> list[tuple[Any, float]]:
    """(token, logprob) pairs of the first reply position's ``top_logprobs``; [] when absent."""
    try:
        first = data["choices"][0]["logprobs"]["content"][0]
        top = first.get("top_logprobs") or []
        return [(entry.get("token", ""), float(entry["logprob"])) for entry in top if "logprob" in entry]
    except (KeyError, IndexError, TypeError, AttributeError, ValueError):
        return []


def _token_text(token: Any) -> str:
    """A token as text: byte-level BPE pieces (``Ġ`` space, ``Ċ`` newline) and sentencepiece ``▁``."""
    text = str(token)
    return text.replace("Ġ", " ").replace("Ċ", "\n").replace("▁", " ")


def _names(ids: Sequence[str] | None) -> str:
    if not ids:
        return "(none)"
    shown = ", ".join(ids[:20])
    return shown + (f" and {len(ids) - 20} more" if len(ids) > 20 else "")

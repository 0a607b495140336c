"""HTTP for the ``openai`` backend: requests to one or more replicas of an OpenAI-compatible server.

Only the standard library (``urllib.request``, a bounded thread pool). Each request goes to the
least busy replica (ties in turn); a retried request prefers another replica. Retried: 429, 408 and
5xx answers, refused or dropped connections and timeouts, with exponential backoff and jitter
(``Retry-After`` honoured up to ``max_wait``); 401 / 403 name the API key variable; the key itself is
masked in every message. Settings come from keywords or ``FTGATE_OPENAI_<NAME>`` variables
(``setting``).
"""

from __future__ import annotations

import concurrent.futures
import email.utils
import http.client
import json
import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pytest_ftgate.errors import BackendError, ConfigError

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
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class Replica:
    """One server URL and how many requests are in flight to it."""

    url: str
    inflight: int = 0
    sent: int = 0


class Failure(Exception):
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


class Client:
    """HTTP to one deployment: its replicas, a bounded pool, retries with backoff. See the module docstring."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        concurrency: int | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        backoff: float | None = None,
        max_wait: float | None = None,
    ) -> None:
        self.replicas = [Replica(url) for url in urls]
        self.concurrency = int(setting("concurrency", concurrency, minimum=1))
        self.timeout = setting("timeout", timeout, minimum=0.001)
        self.retries = int(setting("retries", retries, minimum=0))
        self.backoff = setting("backoff", backoff, minimum=0.0)
        self.max_wait = setting("max_wait", max_wait, minimum=0.0)
        self._lock = threading.Lock()
        self._turn = 0
        self._random = random.Random()

    def post_all(self, bodies: Sequence[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
        """POST every body to /chat/completions through a bounded pool; answers in order.

        The first failure cancels the requests not yet sent and is raised.
        """
        if not bodies:
            return []
        workers = min(len(bodies), self.concurrency * len(self.replicas))
        if workers == 1:
            return [self.post_with_url("/chat/completions", body) for body in bodies]
        stop = threading.Event()
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ftgate-openai")
        try:
            futures = [pool.submit(self.post_with_url, "/chat/completions", body, stop=stop) for body in bodies]
            done, _ = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
            for future in futures:
                error = future.exception() if future in done else None
                if error is not None:
                    raise error
            return [future.result() for future in futures]
        finally:
            stop.set()  # requests in flight finish; none is retried or started after a failure
            pool.shutdown(wait=True, cancel_futures=True)

    def post(self, path: str, body: dict[str, Any], only: Replica | None = None) -> dict[str, Any]:
        return self.post_with_url(path, body, only=only)[1]

    def post_with_url(
        self,
        path: str,
        body: dict[str, Any],
        only: Replica | None = None,
        stop: threading.Event | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """POST with retries (429, 408, 5xx, no answer), exponential backoff with jitter, Retry-After.

        ``stop`` (set when a sibling request failed) ends the retries early.
        """
        failures: list[Failure] = []
        avoid: Replica | None = None
        for attempt in range(self.retries + 1):
            if stop is not None and stop.is_set() and failures:
                break
            replica = only or self._acquire(avoid)
            try:
                status, headers, raw = self.send(replica.url, "POST", path, body, self.timeout)
            except Failure as exc:
                failure = exc
            else:
                if 200 <= status < 300:
                    return replica.url, self.json_body(replica.url, raw)
                if status in (401, 403):
                    raise self.auth_error(replica.url, status, raw)
                failure = Failure(replica.url, status, self.mask(server_message(raw)), _retry_after(headers))
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

    def _where(self, failures: Sequence[Failure]) -> str:
        urls = list(dict.fromkeys(f.url for f in failures))
        return f"server {urls[0]}" if len(urls) == 1 else "servers " + ", ".join(urls)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_wait)
        delay = self.backoff * (2.0**attempt) * (0.5 + self._random.random())
        return min(delay, self.max_wait)

    def _acquire(self, avoid: Replica | None) -> Replica:
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

    def _release(self, replica: Replica) -> None:
        with self._lock:
            replica.inflight -= 1

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": "pytest-ftgate"}
        key = os.environ.get(API_KEY_ENV)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def send(
        self, url: str, method: str, path: str, body: dict[str, Any] | None, timeout: float
    ) -> tuple[int, Any, bytes]:
        """One HTTP exchange: (status, headers, body) for any HTTP answer; ``Failure`` when none came."""
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
            raise Failure(url, None, self.mask(str(exc.reason))) from None
        except TimeoutError:
            raise Failure(url, None, f"timed out after {timeout:g} s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise Failure(url, None, self.mask(f"{type(exc).__name__}: {exc}")) from None

    def json_body(self, url: str, raw: bytes) -> dict[str, Any]:
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            snippet = self.mask(raw[:200].decode("utf-8", "replace"))
            raise BackendError(
                f"server {url} answered with malformed JSON: {snippet!r}. Is it an OpenAI-compatible API?"
            )
        return data

    def unreachable(self, failure: Failure) -> BackendError:
        return BackendError(
            f"cannot reach the openai backend's server {failure.url} ({failure.message}): start the server, "
            f"or point --ftgate-base-url / {BASE_URL_ENV} at it (e.g. http://127.0.0.1:8000/v1)"
        )

    def auth_error(self, url: str, status: int, raw: bytes) -> BackendError:
        has_key = "is set" if os.environ.get(API_KEY_ENV) else "is not set"
        return BackendError(
            f"server {url} refused the request (HTTP {status}: {self.mask(server_message(raw))}): "
            f"check the API key in {API_KEY_ENV} (it {has_key})"
        )

    def mask(self, text: str) -> str:
        key = os.environ.get(API_KEY_ENV)
        return text.replace(key, "***") if key else text


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


def setting(name: str, value: float | None, *, minimum: float) -> float:
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


def server_message(raw: bytes) -> str:
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

"""The backend contract: ``Backend``, the class every backend extends, and its ``Capabilities``.

A backend loads models, puts adapters on them and answers chat prompts. What it can do beyond
that is declared once, in ``capabilities``; the engine (``runner.py``, ``gate.py``,
``context.py``) asks ``backend.capabilities``, never ``hasattr`` or a backend's name. The base
class gives every optional method a default, so a third-party backend writes only ``name``,
``load`` and ``generate``. A minimal one (``tests/test_backend_contract.py`` runs this text):

    >>> from pytest_ftgate.backends import Backend, Model, register_backend
    >>> class EchoBackend(Backend):
    ...     '''Replies with the last user message, cut to ``max_tokens`` characters.'''
    ...     name = "echo"
    ...     def load(self, model):
    ...         return Model(label=model, fingerprint=f"echo:{model}", backend=self, handle=None)
    ...     def generate(self, model, prompts, *, max_tokens, batch_size, stop=None):
    ...         return [messages[-1]["content"][:max_tokens] for messages in prompts]
    >>> backend = EchoBackend()
    >>> backend.generate(backend.load("m"), [[{"role": "user", "content": "positive"}]], max_tokens=3, batch_size=None)
    ['pos']
    >>> backend.capabilities.logprob, backend.capabilities.remote
    (False, False)

Register it with ``register_backend("echo", "mypackage.echo:EchoBackend")`` (or the
``pytest_ftgate_make_backend`` hook) and pass ``--ftgate-backend=echo``. To score answers by
log-probability, override ``score`` and declare ``capabilities = Capabilities(logprob=True)``.

Backends written against the older ``Backend`` Protocol (a plain class with the same methods) keep
working: ``as_backend`` wraps them, reading what they can do from the methods they have.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pytest_ftgate.errors import AdapterError, BackendError, NonFiniteError

Message = dict[str, str]
Prompts = Sequence[Sequence[Message]]  # chat prompts: each a list of messages
StopRule = Callable[[str], bool]


@dataclass
class Model:
    """A loaded model as the gate sees it. ``handle`` is the backend's own object."""

    label: str
    fingerprint: str
    backend: Any  # the Backend that loaded it (Any: Protocol-era backends are plain classes)
    handle: Any = field(repr=False)
    adapter: str | None = None


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do beyond ``load``, ``with_adapter`` and ``generate``.

    - ``logprob``: ``score`` gives log-probabilities of given continuations (``logprob`` mode).
    - ``stop_rules``: ``generate`` ends a sequence early when ``stop(reply so far)`` says so.
    - ``effect_check``: ``effect_logits`` gives logits of a fixed prompt; adapters are proven to act.
    - ``context``: ``context_length`` and ``count_tokens``: prompts that do not fit are refused
      before evaluation (``context.py``).
    - ``describe``: ``describe(model)`` gives fingerprint parts without loading (stored baselines).
    - ``prefix_reuse``: prompt prefixes that rows share are computed once (speed only).
    - ``progress``: ``generate`` and ``score`` take ``progress=callback``: ``callback(done)`` says
      how many of the prompts handed over are finished (``pytest_ftgate.progress``).
    - ``remote``: models are served NAMES, never paths (``--ftgate-base=NAME``).
    - ``deterministic``: the same answers on every run: a stored baseline's audit allows no change.
    - ``joint``: ``generate_sides(models, ...)`` runs several models (a base and adapters on it)
      in one pass, faster than one after the other (speed only: the replies are each model's own).
    """

    logprob: bool = False
    stop_rules: bool = False
    effect_check: bool = False
    context: bool = False
    describe: bool = False
    prefix_reuse: bool = False
    progress: bool = False
    remote: bool = False
    deterministic: bool = False
    joint: bool = False


class Backend:
    """The base of every backend. Subclasses set ``name`` and implement ``load`` and ``generate``;
    every other method has a default that matches ``capabilities`` (a backend that overrides one
    declares it there).

    ``generate`` gets chat messages and returns one reply per prompt, greedy, at most
    ``max_tokens`` tokens; ``stop(text)`` (when given and ``capabilities.stop_rules``) says that the
    reply so far already decides the answer, so decoding that sequence may end early."""

    name: ClassVar[str] = "backend"
    capabilities: ClassVar[Capabilities] = Capabilities()
    # Examples the runner hands over per call (its unit of caching and progress); None: its default.
    default_batch_size: int | None = None

    def version(self) -> str:
        """What the answers depend on besides the model (package versions), for fingerprints."""
        return type(self).__module__

    def load(self, model: str) -> Model:
        raise NotImplementedError(f"{type(self).__name__}.load")

    def with_adapter(self, base: Model, adapter: str) -> Model:
        raise AdapterError(
            f"the {self.name} backend cannot put an adapter on a model: gate a whole model instead "
            "with --ftgate-candidate"
        )

    def generate(
        self, model: Model, prompts: Prompts, *, max_tokens: int, batch_size: int | None, stop: StopRule | None = None
    ) -> list[str]:
        raise NotImplementedError(f"{type(self).__name__}.generate")

    def generate_sides(
        self, models: Sequence[Model], prompts: Prompts, *, max_tokens: int, batch_size: int | None,
        stop: StopRule | None = None, **extra: Any,
    ) -> list[list[str]]:  # fmt: skip
        """Each model's ``generate`` replies to the same prompts (``capabilities.joint``: in one
        pass). Default: one model after the other."""
        return [
            self.generate(m, prompts, max_tokens=max_tokens, batch_size=batch_size, stop=stop, **extra) for m in models
        ]

    def release_adapter(self, model: Model) -> None:
        """Take ``model``'s adapter (from ``with_adapter``) off its base, freeing what it holds; the
        base answers as before and takes another adapter. Default: nothing is held."""

    def score(
        self, model: Model, prompts: Prompts, continuations: Sequence[str]
    ) -> list[list[float]]:
        """Log-probability of each continuation as the start of the reply to each prompt."""
        raise BackendError(f"the {self.name} backend cannot score log-probabilities: use mode='generate'")

    def effect_logits(self, model: Model) -> Any:
        """Logits of every position of a fixed prompt (``local.EFFECT_PROMPT``): the effect check."""
        raise BackendError(f"the {self.name} backend has no effect check")

    def describe(self, model: str) -> dict[str, str] | None:
        """Fingerprint parts of ``model`` without loading it; None: fingerprint the loaded model."""
        return None

    def context_length(self, model: Model) -> int | None:
        """The longest sequence ``model`` takes, in tokens; None when unknown."""
        return None

    def count_tokens(self, model: Model, prompts: Prompts) -> list[int]:
        """Each chat prompt's length in tokens, as ``generate`` would feed it."""
        raise BackendError(f"the {self.name} backend cannot count tokens")


class _ProtocolBackend(Backend):
    """A backend written against the older Protocol (no base class), seen through the contract."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = getattr(inner, "name", type(inner).__name__)  # type: ignore[misc]
        self.capabilities = protocol_capabilities(type(inner))  # type: ignore[misc]
        self.default_batch_size = getattr(inner, "default_batch_size", None)

    def version(self) -> str:
        return str(self.inner.version())

    def load(self, model: str) -> Model:
        return self.inner.load(model)  # type: ignore[no-any-return]

    def with_adapter(self, base: Model, adapter: str) -> Model:
        return self.inner.with_adapter(base, adapter)  # type: ignore[no-any-return]

    def release_adapter(self, model: Model) -> None:
        release = getattr(self.inner, "release_adapter", None)
        if release is not None:
            release(model)

    def generate(
        self, model: Model, prompts: Prompts, *, max_tokens: int, batch_size: int | None, stop: StopRule | None = None,
        **extra: Any,  # progress, when capabilities.progress
    ) -> list[str]:
        if self.capabilities.stop_rules:  # older ones decode to the end
            extra["stop"] = stop
        return list(self.inner.generate(model, prompts, max_tokens=max_tokens, batch_size=batch_size, **extra))

    def score(
        self, model: Model, prompts: Prompts, continuations: Sequence[str], **extra: Any
    ) -> list[list[float]]:
        if not self.capabilities.logprob:
            return super().score(model, prompts, continuations)
        return self.inner.score(model, prompts, continuations, **extra)  # type: ignore[no-any-return]

    def effect_logits(self, model: Model) -> Any:
        return self.inner.probe_logits(model) if self.capabilities.effect_check else super().effect_logits(model)

    def describe(self, model: str) -> dict[str, str] | None:
        return self.inner.describe(model) if self.capabilities.describe else None

    def context_length(self, model: Model) -> int | None:
        return self.inner.context_length(model) if self.capabilities.context else None

    def count_tokens(self, model: Model, prompts: Prompts) -> list[int]:
        if not self.capabilities.context:
            return super().count_tokens(model, prompts)
        return list(self.inner.count_tokens(model, prompts))


@functools.cache
def protocol_capabilities(kind: type) -> Capabilities:
    """What a Protocol-era backend class can do, read from the methods it has (the one place
    that asks ``hasattr``: classes that extend ``Backend`` declare ``capabilities`` instead)."""
    if isinstance(kind, type) and issubclass(kind, Backend):
        return kind.capabilities
    try:
        takes = inspect.signature(kind.generate).parameters  # type: ignore[attr-defined]
    except (AttributeError, TypeError, ValueError):
        takes = {}  # type: ignore[assignment]
    return Capabilities(
        logprob=hasattr(kind, "score"),
        stop_rules="stop" in takes,
        progress="progress" in takes,
        effect_check=hasattr(kind, "probe_logits"),
        context=hasattr(kind, "context_length") and hasattr(kind, "count_tokens"),
        describe=hasattr(kind, "describe"),
        remote=bool(getattr(kind, "remote", False)),
        deterministic=bool(getattr(kind, "deterministic", False)),
    )


def as_backend(backend: Any) -> Backend:
    """``backend`` itself when it extends ``Backend``; a Protocol-era backend, wrapped."""
    return backend if isinstance(backend, Backend) else _ProtocolBackend(backend)


def non_finite(model: Model, what: str, index: int | None = None) -> NonFiniteError:
    """The error for NaN or infinite ``what`` (logits, log-probabilities) from ``model``; ``index``:
    the prompt, of those handed to the backend, that produced them."""
    return NonFiniteError(
        f"{model.label} gave non-finite {what} (NaN or inf), which no verdict can be drawn from. The usual "
        "causes: an adapter whose weights are broken (training diverged?), or a model that overflows in its "
        "dtype (float16): retrain or pick an earlier checkpoint, or run the model in float32 or bfloat16",
        index,
    )


def check_scores(model: Model, rows: Iterable[Sequence[float]]) -> list[list[float]]:
    """``rows`` (a backend's ``score``: log-probabilities per prompt) as lists, when every value is
    finite; otherwise the ``non_finite`` error naming the first prompt that has one."""
    checked = [list(row) for row in rows]
    for index, row in enumerate(checked):
        if not all(math.isfinite(value) for value in row):
            raise non_finite(model, "log-probabilities", index)
    return checked

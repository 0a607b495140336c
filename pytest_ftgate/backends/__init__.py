"""Backends: the ``Backend`` protocol, a lazy registry of ``"module:Class"`` strings, and ``auto``.

A backend loads models, injects adapters and produces completions. Heavy libraries are imported
only inside the backend module, when the backend is created.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import math
import platform
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Protocol, runtime_checkable

from pytest_ftgate.errors import BackendError, NonFiniteError

Message = dict[str, str]


@dataclass
class Model:
    """A loaded model as the gate sees it. ``handle`` is the backend's own object."""

    label: str
    fingerprint: str
    backend: Backend
    handle: Any = field(repr=False)
    adapter: str | None = None


# A fixed probe prompt: an adapter that changes nothing on it is refused (see ``attach_adapter``).
PROBE: list[Message] = [
    {"role": "system", "content": "You are a careful assistant."},
    {"role": "user", "content": "Which number is larger, 12 or 21? Answer and explain briefly."},
]
NO_EFFECT_TOLERANCE = 1e-6  # relative to the largest base logit


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


def attach_adapter(
    backend: Backend, base: Model, name: str, fp: str, where: object, remove: Callable[[], None], fix: str
) -> Model:
    """The tuned ``Model`` for an adapter already loaded onto ``base`` (key ``fp``), after proving
    that it acts: its logits on ``PROBE`` must differ from the base's (``backend.probe_logits``).
    An adapter that changes nothing (zero LoRA B matrices: untrained or empty) is taken off
    again (``remove``) and refused with an AdapterError naming ``where`` and ``fix``; so is one
    that makes the logits NaN or infinite (a NaN compares as neither changed nor unchanged)."""
    import numpy as np

    from pytest_ftgate.errors import AdapterError

    tuned = Model(
        label=f"{base.label} + {name}", fingerprint=f"{base.fingerprint}+{fp}", backend=backend,
        handle=base.handle, adapter=fp,
    )  # fmt: skip
    base_logits = np.asarray(backend.probe_logits(base), dtype=np.float64)
    if not np.isfinite(base_logits).all():
        remove()
        raise non_finite(base, "logits on a probe prompt")
    tuned_logits = np.asarray(backend.probe_logits(tuned), dtype=np.float64)
    if not np.isfinite(tuned_logits).all():
        remove()
        raise AdapterError(
            f"adapter {where} makes the model's logits on a probe prompt NaN or infinite: the adapter is broken "
            "(training diverged?); retrain or pick an earlier checkpoint"
        )
    change = float(np.max(np.abs(tuned_logits - base_logits)))
    if change <= NO_EFFECT_TOLERANCE * (float(np.max(np.abs(base_logits))) or 1.0):
        remove()
        raise AdapterError(
            f"adapter {where} has no effect: the model's logits on a probe prompt are unchanged "
            f"(max change {change:.3g}). Its LoRA B matrices are probably zero (an untrained or "
            f"empty adapter): check that training ran and that {fix}"
        )
    return tuned


@runtime_checkable
class Backend(Protocol):
    """What a backend provides. ``generate`` gets chat messages and returns one reply per prompt,
    greedy, at most ``max_tokens`` tokens; ``stop(text)`` (when given) says that the reply so far
    already decides the answer, so decoding that sequence may end early.

    Optional: ``describe(model) -> dict[str, str]`` (fingerprint parts without loading, for stored
    baselines), ``score(model, prompts, continuations) -> list[list[float]]`` (log-probabilities,
    for ``logprob`` mode), ``default_batch_size`` and ``remote`` (models are served names), and
    ``context_length(model) -> int | None`` with ``count_tokens(model, prompts) -> list[int]`` (the
    longest sequence the model takes, and each chat prompt's length in tokens as ``generate`` would
    feed it: prompts that do not fit are refused before evaluation, see ``context.py``)."""

    name: str

    def version(self) -> str: ...

    def load(self, model: str) -> Model: ...

    def with_adapter(self, base: Model, adapter: str) -> Model: ...

    def generate(
        self,
        model: Model,
        prompts: Sequence[Sequence[Message]],
        *,
        max_tokens: int,
        batch_size: int | None,
        stop: Callable[[str], bool] | None = None,
    ) -> list[str]: ...


def package_versions(*distributions: str) -> str:
    """``"mlx==0.32.4 mlx-vlm==0.7.6"``: what a backend's answers depend on, for fingerprints."""
    parts = []
    for dist in distributions:
        try:
            parts.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{dist} missing")
    return " ".join(parts)


# name -> ("module:Class", extra to install, modules it needs)
REGISTRY: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "mlx": ("pytest_ftgate.backends.mlx:MLXBackend", "mlx", ("mlx", "mlx_vlm", "mlx_tune")),
    "openai": ("pytest_ftgate.backends.openai:OpenAIBackend", "openai", ()),
    "transformers": (
        "pytest_ftgate.backends.transformers:TransformersBackend",
        "torch",
        ("torch", "transformers", "peft"),
    ),
    "llamacpp": ("pytest_ftgate.backends.llamacpp:LlamaCppBackend", "llamacpp", ("llama_cpp",)),
}
_EXTERNAL: dict[str, str] = {}


def register_backend(name: str, target: str) -> None:
    """Register a third-party backend as ``"package.module:Class"``."""
    _EXTERNAL[name] = target


def backend_names() -> list[str]:
    return sorted({*REGISTRY, *_EXTERNAL})


def _installed(modules: tuple[str, ...]) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def resolve_auto() -> str:
    """``auto``: mlx on Apple Silicon; elsewhere the first installed backend in speed order."""
    if sys.platform == "darwin" and platform.machine() == "arm64" and _installed(REGISTRY["mlx"][2]):
        return "mlx"
    for name in ("transformers", "mlx"):  # llamacpp only by name: it reads GGUF files, not model folders
        if name in REGISTRY and _installed(REGISTRY[name][2]):
            return name
    raise BackendError(
        "no ftgate backend is installed: install one, e.g. pip install 'pytest-ftgate[mlx]' "
        "(or [torch], [openai], [llamacpp])"
    )


def create_backend(name: str, **options: Any) -> Backend:
    """Instantiate a backend by registry name; a clear error when unknown or not installed."""
    if name == "auto":
        name = resolve_auto()
    target = _EXTERNAL.get(name)
    if target is None:
        if name not in REGISTRY:
            hint = difflib.get_close_matches(name, backend_names(), n=1)
            did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
            raise BackendError(
                f"unknown ftgate backend {name!r}.{did_you_mean} Available: auto, {', '.join(backend_names())}"
            )
        target, extra, modules = REGISTRY[name]
        missing = [m for m in modules if importlib.util.find_spec(m) is None]
        if missing:
            raise BackendError(f"the {name!r} backend needs {', '.join(missing)}: pip install 'pytest-ftgate[{extra}]'")
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    backend: Backend = cls(**options)
    return backend

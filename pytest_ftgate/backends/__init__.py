"""Backends: the ``Backend`` base class (``base.py``), a lazy registry of ``"module:Class"`` strings,
and ``auto``.

A backend loads models, injects adapters and produces completions. Heavy libraries are imported
only inside the backend module, when the backend is created. ``local.py`` is the shared layer of
the backends that run models in this process (mlx, transformers, llamacpp); ``openai`` talks to a
server.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import platform
import sys
from importlib import metadata
from typing import Any

from pytest_ftgate.backends.base import (
    Backend,
    Capabilities,
    Message,
    Model,
    Prompts,
    StopRule,
    as_backend,
    check_scores,
    non_finite,
    protocol_capabilities,
)
from pytest_ftgate.errors import BackendError

__all__ = [
    "REGISTRY",
    "Backend",
    "Capabilities",
    "Message",
    "Model",
    "Prompts",
    "StopRule",
    "as_backend",
    "backend_names",
    "check_scores",
    "create_backend",
    "non_finite",
    "package_versions",
    "register_backend",
    "resolve_auto",
    "serves_names",
]


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


def serves_names(backend: str | object) -> bool:
    """Whether ``backend`` (a registry name or a backend) takes served model NAMES
    (``capabilities.remote``): they are sent exactly as given, never resolved as paths. A name
    is answered from its class, without creating the backend; an unknown one is not served
    (``create_backend`` reports it)."""
    if not isinstance(backend, str):
        return as_backend(backend).capabilities.remote
    target = _EXTERNAL.get(backend) or REGISTRY.get(backend, ("",))[0]
    module_name, _, class_name = target.partition(":")
    try:
        kind = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError):
        return False
    return protocol_capabilities(kind).remote


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
    return as_backend(cls(**options))

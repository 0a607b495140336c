"""What the ``transformers`` backend agrees to load, and how it says why not: safetensors weights
only (pickle files can run code when loaded; ``FTGATE_ALLOW_PICKLE=1`` allows them for files you
trust), one-sentence load failures that name the fix, no progress bars in pytest's output, and the
local snapshot a hub id was loaded from (for fingerprints).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pytest_ftgate.errors import ModelError

ALLOW_PICKLE_ENV = "FTGATE_ALLOW_PICKLE"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@contextlib.contextmanager
def no_progress_bars() -> Iterator[None]:
    """transformers prints a "Loading weights" bar; keep pytest's output clean."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def check_weights(folder: Path, allow_pickle: bool) -> None:
    """Refuse a folder whose only weights are pickle files (they can run code when loaded)."""
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles and not allow_pickle:
        raise ModelError(
            f"{folder / pickles[0]} is a pickle file, which can run code when loaded; ftgate refuses it. "
            "Convert the model to safetensors (model.save_pretrained(..., safe_serialization=True)), "
            f"or set {ALLOW_PICKLE_ENV}=1 if you trust the file"
        )


def load_failure(model: str, exc: Exception, allow_pickle: bool) -> str:
    text = " ".join(str(exc).split()).rstrip(".")  # the sentences below add their own full stop
    if len(text) > 400:
        text = text[:400] + " ..."
    message = f"transformers could not load base model {model}: {type(exc).__name__}: {text}"
    if "trust_remote_code" in text:
        return message + ". ftgate never runs a model's own code (trust_remote_code): use a model transformers supports"
    if not allow_pickle and ".safetensors" in text:
        return (
            message + f". ftgate loads safetensors weights only; pickle weights need {ALLOW_PICKLE_ENV}=1 "
            "(only for files you trust)"
        )
    return message + ". The base must be a local model folder, or a hub id that is downloaded or reachable"


def snapshot_path(model: str) -> str:
    """The local snapshot a hub id was loaded from, for fingerprinting (the id itself if unknown)."""
    try:
        from huggingface_hub import snapshot_download

        return str(snapshot_download(model, local_files_only=True))
    except Exception:
        return model


def prepare_tokenizer(tokenizer: Any, label: str, template_fix: str) -> None:
    """Left padding and a pad token (the eos or unk token when it has none), in place; a
    ModelError naming ``label`` when it has none of them, or no chat template (``template_fix``
    says how to get one)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        if tokenizer.pad_token is None:
            raise ModelError(f"the tokenizer of {label} has no pad, eos or unk token: batched generation needs one")
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(f"the tokenizer of {label} has no chat template: ftgate sends chat prompts; {template_fix}")

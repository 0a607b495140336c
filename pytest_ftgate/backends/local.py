"""The shared layer of the backends that run models in this process (mlx, transformers, llamacpp).

- Adapters: ``LocalBackend.with_adapter`` is the one attach/verify/detach sequence. A backend
  reads the adapter and checks that it fits the base (``prepare_adapter``: nothing on the model
  is touched yet, so a refused adapter leaves the base as it was), puts it on
  (``attach_adapter``), and the effect check proves that it acts: its logits on
  ``EFFECT_PROMPT`` must differ from the base's, and be finite. Whatever fails after the model
  was touched, ``detach_adapter`` takes the adapter off again, completely (the base answers as
  before and takes another adapter).
- Chat prompts: ``chat_prompt`` renders with the model's template and, when the template rejects
  the system role (Gemma 2, some Mistral templates), folds the system text into the first user
  message, ``system + "\\n\\n" + user``, the usual convention for such models.
- Greedy decoding: ``decode_step`` is the bookkeeping of one step for every decode loop: a
  non-finite row stops the batch, end-of-sequence and ``max_tokens`` end a row, and the
  benchmark's stop rule ends a row whose answer is decided.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from pytest_ftgate.adapters import AdapterInfo, inspect_adapter
from pytest_ftgate.backends.base import Backend, Capabilities, Message, Model, Prompts, StopRule, non_finite
from pytest_ftgate.errors import AdapterError, BackendError, NonFiniteError

# A fixed prompt: an adapter that changes nothing on it is refused (``LocalBackend.with_adapter``).
EFFECT_PROMPT: list[Message] = [
    {"role": "system", "content": "You are a careful assistant."},
    {"role": "user", "content": "Which number is larger, 12 or 21? Answer and explain briefly."},
]
NO_EFFECT_TOLERANCE = 1e-6  # relative to the largest base logit


class LocalBackend(Backend):
    """A backend that loads weights into this process. Subclasses implement ``load``,
    ``generate``, ``effect_logits`` and the three adapter steps; ``with_adapter`` is shared."""

    capabilities: ClassVar[Capabilities] = Capabilities(
        logprob=True, stop_rules=True, effect_check=True, context=True, describe=True, prefix_reuse=True
    )
    fix_hint: ClassVar[str] = "the right folder was saved"  # how to get a working adapter file

    def __init__(self, **options: Any) -> None:
        self.options = options

    # -- the adapter steps a local backend implements -----------------------------------------

    def read_adapter(self, adapter: str) -> AdapterInfo:
        """The adapter's files, checked (``inspect_adapter``); its fingerprint keys it on the base."""
        return inspect_adapter(adapter)

    def adapter_place(self, info: AdapterInfo) -> Path:
        """The file or folder that names the adapter in labels and errors."""
        return info.path

    def has_adapter(self, handle: Any, fingerprint: str) -> bool:
        """Whether the adapter is already on the loaded base (its Model may be made again)."""
        raise NotImplementedError

    def prepare_adapter(self, handle: Any, info: AdapterInfo) -> Any:
        """Read the adapter and check that every tensor fits the base; raise AdapterError if not.
        Must not touch the model."""
        raise NotImplementedError

    def attach_adapter(self, handle: Any, fingerprint: str, prepared: Any) -> None:
        """Put the prepared adapter on the base (under ``fingerprint``). On failure ``with_adapter``
        calls ``detach_adapter``."""
        raise NotImplementedError

    def detach_adapter(self, handle: Any, fingerprint: str) -> None:
        """Take the adapter off the base completely (no-op when it is not on)."""
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------------

    def with_adapter(self, base: Model, adapter: str) -> Model:
        """``base`` with ``adapter``, sharing its weights; refused (AdapterError) when it does not
        fit, has no effect or makes the logits non-finite, and then the base is as it was."""
        info = self.read_adapter(adapter)
        fingerprint = info.fingerprint()
        handle = base.handle
        if not self.has_adapter(handle, fingerprint):
            prepared = self.prepare_adapter(handle, info)
            try:
                self.attach_adapter(handle, fingerprint, prepared)
            except BaseException:
                self.detach_adapter(handle, fingerprint)
                raise
        place = self.adapter_place(info)
        tuned = Model(
            label=f"{base.label} + {place.name}", fingerprint=f"{base.fingerprint}+{fingerprint}",
            backend=self, handle=handle, adapter=fingerprint,
        )  # fmt: skip
        try:
            self.check_effect(base, tuned, place)
        except BaseException:
            self.detach_adapter(handle, fingerprint)
            raise
        return tuned

    def release_adapter(self, model: Model) -> None:
        """``detach_adapter`` for ``model``'s adapter: a Model that still names it is refused."""
        if model.adapter is not None:
            self.detach_adapter(model.handle, model.adapter)

    def check_effect(self, base: Model, tuned: Model, where: Path) -> None:
        """The effect check: ``tuned``'s logits on ``EFFECT_PROMPT`` must be finite and differ from
        ``base``'s. An adapter that changes nothing (zero LoRA B matrices: untrained or empty) is
        refused, and so is one that makes the logits NaN or infinite (NaN compares as neither)."""
        import numpy as np

        base_logits = np.asarray(self.effect_logits(base), dtype=np.float64)
        if not np.isfinite(base_logits).all():
            raise non_finite(base, "logits on a probe prompt")
        tuned_logits = np.asarray(self.effect_logits(tuned), dtype=np.float64)
        if not np.isfinite(tuned_logits).all():
            raise AdapterError(
                f"adapter {where} makes the model's logits on a probe prompt NaN or infinite: the adapter is "
                "broken (training diverged?); retrain or pick an earlier checkpoint"
            )
        change = float(np.max(np.abs(tuned_logits - base_logits)))
        if change <= NO_EFFECT_TOLERANCE * (float(np.max(np.abs(base_logits))) or 1.0):
            raise AdapterError(
                f"adapter {where} has no effect: the model's logits on a probe prompt are unchanged "
                f"(max change {change:.3g}). Its LoRA B matrices are probably zero (an untrained or "
                f"empty adapter): check that training ran and that {self.fix_hint}"
            )

    def prompt_ids(self, model: Model, messages: Sequence[Message]) -> list[int]:
        """The token ids ``generate`` and ``score`` feed for a chat prompt (chat template included)."""
        raise NotImplementedError

    def count_tokens(self, model: Model, prompts: Prompts) -> list[int]:
        """Each prompt's length in tokens, chat template included (what ``generate`` feeds)."""
        return [len(self.prompt_ids(model, messages)) for messages in prompts]

    def probe_logits(self, model: Model) -> Any:
        """The former name of ``effect_logits`` (kept for callers written before the rename)."""
        return self.effect_logits(model)


def chat_prompt(
    render: Callable[[list[Message]], str], messages: Sequence[Message], folded: bool, where: object
) -> tuple[str, bool]:
    """``(text, folded)``: ``messages`` rendered by the chat template (``render``), the system text
    folded into the first user message when ``folded`` or when the template rejects the system
    role (then ``folded`` comes back True: the caller remembers it for the model). A template that
    fails anyway is a BackendError naming ``where`` (the model)."""
    copies = [dict(m) for m in messages]
    if folded:
        return render(fold_system(copies)), True
    try:
        return render(copies), False
    except Exception as exc:
        if not any(m.get("role") == "system" for m in copies):
            raise BackendError(f"the chat template of {where} failed: {type(exc).__name__}: {exc}") from None
        first_error = exc
    try:
        return render(fold_system(copies)), True
    except Exception:
        raise BackendError(
            f"the chat template of {where} failed: {type(first_error).__name__}: {first_error}"
        ) from None


def fold_system(messages: Sequence[Message]) -> list[Message]:
    """The messages without system ones, their text put before the first user message's."""
    system = "\n\n".join(str(m["content"]) for m in messages if m.get("role") == "system")
    rest = [dict(m) for m in messages if m.get("role") != "system"]
    for message in rest:
        if message.get("role") == "user" and system:
            message["content"] = f"{system}\n\n{message['content']}"
            break
    return rest


def decode_step(
    tokens: Sequence[int],
    active: Sequence[int | None],
    out: list[list[int]],
    *,
    eos: Callable[[int], bool],
    max_tokens: int,
    stop: StopRule | None,
    texts: Callable[[list[list[int]]], list[str]],
) -> list[int]:
    """One greedy step's bookkeeping, for every decode loop: ``tokens[slot]`` is the token chosen
    for batch slot ``slot`` (-1: its logits were not finite), ``active[slot]`` the output row it
    belongs to (None: finished earlier). Appends each token to its row of ``out`` and returns the
    slots still running: not at end-of-sequence (``eos``), under ``max_tokens``, and not decided
    by ``stop`` (the reply so far, from ``texts``). A non-finite row raises NonFiniteError
    (``index``: the row) before its token is fed."""
    keep = []
    for slot, token in enumerate(tokens):
        row = active[slot]
        if row is None:
            continue
        if token < 0:
            raise NonFiniteError("non-finite logits", row)
        if eos(token):
            continue
        out[row].append(token)
        if len(out[row]) < max_tokens:
            keep.append(slot)
    if stop is not None and keep:
        replies = texts([out[active[slot]] for slot in keep])  # type: ignore[index]
        keep = [slot for slot, text in zip(keep, replies, strict=True) if not stop(text.rstrip("\ufffd"))]
    return keep


def misfit(weights: Path, base: object, unknown: Sequence[str], mismatched: Sequence[str]) -> AdapterError:
    """The error for an adapter whose tensors do not land on ``base``: ``unknown`` keys (no such
    module or parameter) and ``mismatched`` shapes, the first three of each named."""
    detail = "; ".join([*(f"no parameter {k}" for k in unknown[:3]), *mismatched[:3]])
    return AdapterError(
        f"{weights} does not fit base model {base}: "
        f"{len(unknown)} unknown keys, {len(mismatched)} shape mismatches ({detail}). "
        "The adapter was trained for another base model: pass that base with --ftgate-base"
    )


def renamed_non_finite(model: Model, exc: NonFiniteError, rows: Sequence[int]) -> NonFiniteError:
    """``exc`` (a batch's row ``exc.index``) as the error naming ``model`` and the prompt it was."""
    return non_finite(model, "logits", None if exc.index is None else rows[exc.index])

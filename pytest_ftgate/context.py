"""Prompts longer than the model's context, found before evaluation starts.

A prompt that does not fit fails deep inside the backend (or runs for minutes and exhausts
memory first). ``check_context`` asks the backend for the model's context length and the
prompts' token counts (the optional ``context_length(model)`` and ``count_tokens(model,
prompts)``; a backend without them, or that answers None, such as a served model, is not
checked: its server says so) and raises one ``DataError`` naming the first offenders by file and
line, with their lengths and the fix.

The budget is the prompt plus the reply: ``max_tokens`` in ``generate`` mode, the longest answer
form in ``logprob`` mode (counted in UTF-8 bytes, which no token is shorter than). A prompt of
more than ``MAX_CHARS_PER_TOKEN`` characters per token of the context is refused without
tokenizing it: a cheap guard, so that a 50 MB line costs neither minutes nor gigabytes. It
assumes no tokenizer averages more than 64 characters per token over a whole prompt (real text
averages about 4; only pathological input, such as megabytes of one repeated character, could
exceed it).
"""

from __future__ import annotations

from collections.abc import Sequence

from pytest_ftgate.backends import Message, Model, as_backend
from pytest_ftgate.benchmarks.base import Benchmark, Example
from pytest_ftgate.errors import DataError

MAX_CHARS_PER_TOKEN = 64
SHOWN = 5  # offenders listed by name; the rest are counted


def reply_budget(benchmark: Benchmark, mode: str) -> int:
    """Tokens kept free for the reply: ``max_tokens``, or the longest answer form in bytes."""
    if mode == "generate":
        return benchmark.max_tokens
    forms = [form for variants in benchmark.answer_forms().values() for form in variants]
    return max((len(form.encode("utf-8")) for form in forms), default=1)


def where(example: Example) -> str:
    return example.source or f"example {example.id!r}"


def check_context(benchmark: Benchmark, model: Model, examples: Sequence[Example], mode: str) -> None:
    """Raise a ``DataError`` when any example's prompt plus reply exceeds the model's context."""
    backend = as_backend(model.backend)
    context = backend.context_length(model) if backend.capabilities.context and examples else None
    if context is None:
        return
    budget = context - reply_budget(benchmark, mode)
    prompts: list[list[Message]] = [benchmark.messages(e) for e in examples]
    chars = [sum(len(m["content"]) for m in messages) for messages in prompts]
    offenders: list[tuple[Example, str]] = []
    measured = [i for i, n in enumerate(chars) if n <= MAX_CHARS_PER_TOKEN * context]
    tokens = dict(zip(measured, backend.count_tokens(model, [prompts[i] for i in measured]), strict=True))
    for i, example in enumerate(examples):
        if i not in tokens:
            offenders.append((example, f"{chars[i]:,} characters (far more than {context:,} tokens can hold)"))
        elif tokens[i] > budget:
            offenders.append((example, f"{tokens[i]:,} tokens"))
    if not offenders:
        return
    reply = "reply" if mode == "generate" else "longest answer"
    lines = [f"  {where(example)}: {size}" for example, size in offenders[:SHOWN]]
    if len(offenders) > SHOWN:
        lines.append(f"  ... and {len(offenders) - SHOWN} more")
    raise DataError(
        f"{benchmark.title}: {len(offenders)} of {len(examples)} prompts do not fit the context of "
        f"{model.label} ({context:,} tokens, {context - budget:,} of them kept for the {reply}; "
        f"prompts may have at most {max(budget, 0):,}):\n" + "\n".join(lines) + "\n"
        "shorten or drop these examples, or use a model with a longer context"
    )

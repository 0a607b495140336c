"""The prefill and decode loop of the ``transformers`` backend: prompts through the model with
shared prefixes computed once (``prefill``), then greedy steps on a static cache replayed from a
CUDA graph (``torch_graphs.StaticDecoder``) or on the dynamic cache (``decode_prefilled``). With
the static decoder, a decode batch takes the queue's next prompts as its rows finish
(``decode_stream``, ``QueueRefill``; ``Run`` keeps one ``generate_sides`` call's rows).

Imported only by ``backends/transformers.py``; torch and transformers are imported inside the
functions, so importing this module stays light.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pytest_ftgate.backends.base import StopRule
from pytest_ftgate.backends.local import decode_step
from pytest_ftgate.backends.prefix import PASS_COST_CPU, PASS_COST_GPU, prefix_plan
from pytest_ftgate.backends.torch_graphs import (
    StaticDecoder,
    cache_arg,
    greedy,
    merge_prefills,
    plain_cache,
    planned_forward,
    prefix_states,
)
from pytest_ftgate.errors import NonFiniteError

if TYPE_CHECKING:
    from pytest_ftgate.backends import Model
    from pytest_ftgate.backends.transformers import TransformersBackend, _Loaded

CUDA_GRAPHS_ENV = "FTGATE_CUDA_GRAPHS"  # "0": decode with a dynamic cache on CUDA too
REFILL_SHARE = 0.5  # a decode batch takes prompts from the queue once this share of its rows finished


def prefill(
    loaded: _Loaded, ids: list[list[int]], memo: dict[str, Any] | None = None
) -> tuple[Any, Any, Any, Any]:
    """The prompts through the model: (last-position logits, attention mask, next position
    ids, cache). The layout is exact for sliding windows of any length.

    The batch is an ordinary left-padded one (``torch_graphs.planned_forward``). Token prefixes
    that rows share are computed once (``prefix.prefix_plan``): the heads' prefixes run in
    passes of their own (``torch_graphs.prefix_states``, as deep as the plan goes), their keys
    and values are copied into the rows' first cache slots, and the model then runs only the
    remaining slots. ``memo`` keeps the last prefix pass at every level, so the batches of one
    call compute a prefix they share (the system prompt) once."""
    from transformers import DynamicCache

    cache = DynamicCache(config=loaded.model.config)
    cost = PASS_COST_GPU if loaded.device.startswith("cuda") else PASS_COST_CPU
    plan = prefix_plan(ids, cost) if plain_cache(loaded.model, cache) else None
    states = prefix_states(loaded, plan.prefixes, plan=plan.sub, memo=memo) if plan is not None else None
    output, mask, positions = planned_forward(loaded, ids, cache, plan, states)
    return output.logits, mask, positions[:, -1:] + 1, cache


def decode_prefilled(
    loaded: _Loaded,
    prefilled: tuple[Any, Any, Any, Any],
    max_tokens: int,
    eos: set[int],
    stop: StopRule | None,
    forced: bool | None = None,
) -> list[list[int]] | None:
    """The decode steps after ``prefill``: each row's new tokens (end-of-sequence excluded), or
    None when the static decoder failed to start (``forced``: the ``static_decode`` option).
    Where the static decoder applies, ``decode_stream`` (no refill); elsewhere the dynamic cache,
    finished rows dropped from the batch."""
    import torch

    logits, mask, position, cache = prefilled
    rows = mask.shape[0]
    if static_wanted(loaded, max_tokens, forced) and plain_cache(loaded.model, cache):
        results: dict[int, list[int]] = {}
        ran = decode_stream(loaded, prefilled, list(range(rows)), max_tokens, eos, stop, results,
                            scope=lambda labels: contextlib.nullcontext(), forced=forced)  # fmt: skip
        return [results[row] for row in range(rows)] if ran else None
    next_tokens = greedy(logits[:, -1])
    out: list[list[int]] = [[] for _ in range(rows)]
    active: list[int | None] = list(range(rows))  # batch row -> output row (None: finished)
    texts = functools.partial(loaded.tokenizer.batch_decode, skip_special_tokens=True)
    for _ in range(max_tokens):
        keep = decode_step(
            next_tokens.tolist(), active, out, eos=eos.__contains__, max_tokens=max_tokens, stop=stop, texts=texts
        )
        if not keep:
            break
        if len(keep) < len(active):
            index = torch.tensor(keep, device=mask.device)
            cache.batch_select_indices(index)
            mask, position, next_tokens = mask[index], position[index], next_tokens[index]
            active = [active[slot] for slot in keep]
        mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
        output = loaded.model(
            input_ids=next_tokens[:, None],
            attention_mask=mask,
            position_ids=position,
            **cache_arg(loaded.model, cache),
            use_cache=True,
            logits_to_keep=1,
        )
        position = position + 1
        next_tokens = greedy(output.logits[:, -1])
    return out


class Refill(Protocol):
    """Where ``decode_stream`` takes more prompts from: ``fits(width, running)``, whether the
    next ones fit beside ``running`` rows of ``width`` slots; ``take(width, running)``, as many
    as fit, prefilled (logits, mask, next positions, cache), with their labels."""

    def fits(self, width: int, running: int) -> bool: ...

    def take(self, width: int, running: int) -> tuple[tuple[Any, Any, Any, Any], list[int]] | None: ...


def decode_stream(
    loaded: _Loaded,
    prefilled: tuple[Any, Any, Any, Any],
    labels: list[int],
    max_tokens: int,
    eos: set[int],
    stop: StopRule | None,
    results: dict[int, list[int]],
    scope: Callable[[list[int]], AbstractContextManager[Any]],
    refill: Refill | None = None,
    forced: bool | None = None,
) -> bool:
    """Decode batches that stay full, on the static decoder: the rows of ``prefilled`` (their
    ``labels``) are decoded greedily, each finished row's new tokens going into ``results``
    under its label. Once ``REFILL_SHARE`` of a decode batch's rows have finished and the queue
    holds more (``refill``), the running rows are carried out of it (``StaticDecoder.carry``:
    next tokens, mask, positions, keys and values) and merged (``merge_prefills``) with prompts
    the queue prefills into the next decode batch, whose graph is captured anew. A row goes on
    where it was: what it computes does not depend on the rows beside it. ``scope(labels)`` is
    the context each batch's steps run in (the rows' adapters). False when the static decoder
    failed to start (the rows not in ``results`` are then the caller's)."""
    logits, mask, position, cache = prefilled
    state = (greedy(logits[:, -1]), mask, position, cache)
    outs: list[list[int]] = [[] for _ in labels]
    texts = functools.partial(loaded.tokenizer.batch_decode, skip_special_tokens=True)
    while labels:
        tokens, mask, position, cache = state
        with scope(labels):
            static = static_decoder(loaded, cache, mask, position, tokens, max_tokens, forced)
            if not static:
                return False
            active: list[int | None] = list(range(len(labels)))
            keep: list[int] = []
            for step in range(max_tokens):
                chosen = static.current().tolist()
                if step < max_tokens - 1:
                    # the next step does not depend on which rows finish here: the GPU runs it
                    # while the host checks the stop rules (at worst one step is computed in vain)
                    static.advance()
                try:
                    keep = decode_step(chosen, active, outs, eos=eos.__contains__, max_tokens=max_tokens, stop=stop,
                                       texts=texts)  # fmt: skip
                except NonFiniteError as exc:
                    raise NonFiniteError(str(exc), None if exc.index is None else labels[exc.index]) from None
                kept = set(keep)
                for slot, row in enumerate(active):
                    if row is not None and slot not in kept:
                        results[labels[row]] = outs[row]
                active = [row if slot in kept else None for slot, row in enumerate(active)]
                if not keep:
                    break
                if refill is not None and step < max_tokens - 1 and len(keep) <= (1 - REFILL_SHARE) * len(labels):
                    if refill.fits(static.width + static.launched, len(keep)):
                        break  # enough rows finished: the next decode batch takes them and more
            if not keep:
                return True
            state = static.carry(keep)
        del static  # its buffers and graph go before the next prefill
        labels, outs = [labels[slot] for slot in keep], [outs[slot] for slot in keep]
        added = refill.take(state[1].shape[1], len(labels)) if refill is not None else None
        if added is not None:
            (logits, *rest), more = added
            state = merge_prefills([state, (greedy(logits[:, -1]), *rest)])
            labels, outs = labels + more, outs + [[] for _ in more]
    return True


@dataclass
class Run:
    """One ``generate_sides`` call: its prompts' token ids, every row handed to a decode batch
    (``rows[label]``: model index, prompt index), the new tokens of those finished
    (``results[label]``), each model's last prefix pass (``memos``) and the replies so far."""

    loaded: _Loaded
    models: Sequence[Model]
    ids: list[list[int]]
    max_tokens: int
    eos: set[int]
    stop: StopRule | None
    progress: Callable[[int], None] | None
    budget: int = 0  # bytes of KV cache a decode batch may take (``_decode_budget``)
    rows: list[tuple[int, int]] = field(default_factory=list)
    results: dict[int, list[int]] = field(default_factory=dict)
    memos: list[dict[str, Any]] = field(default_factory=list)
    replies: list[list[str]] = field(default_factory=list)
    reported: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.memos = [{} for _ in self.models]
        self.replies = [[""] * len(self.ids) for _ in self.models]

    def label(self, units: Sequence[tuple[int, list[int]]]) -> list[int]:
        """New labels for the rows of ``units``."""
        first = len(self.rows)
        self.rows += [(side, index) for side, chunk in units for index in chunk]
        return list(range(first, len(self.rows)))

    def unfinished(self, units: Sequence[tuple[int, list[int]]]) -> list[tuple[int, list[int]]]:
        """``units`` without the rows that have finished (units left empty dropped)."""
        done = {self.rows[label] for label in self.results}
        kept = [(side, [i for i in chunk if (side, i) not in done]) for side, chunk in units]
        return [(side, chunk) for side, chunk in kept if chunk]

    def report(self) -> None:
        """The finished rows' replies, and ``progress`` (prompts done, averaged over models)."""
        new = self.results.keys() - self.reported
        if not new:
            return
        for label in new:
            side, index = self.rows[label]
            self.replies[side][index] = self.loaded.tokenizer.decode(self.results[label], skip_special_tokens=True)
        self.reported |= new
        if self.progress is not None:
            self.progress(len(self.results) // len(self.models))


class QueueRefill:
    """``Refill`` over ``generate_sides``'s queue of prefill units: the next units in order,
    whole, as many as fit beside the running rows (``_decode_rows`` of the run's budget, at the
    widest of their widths plus ``max_tokens``), each prefilled with its model's adapter on.
    Whole units only: a refill that starts part of the next batch now and the rest later can end
    later than no refill. What it takes is added to ``held`` (requeued if memory runs out)."""

    def __init__(
        self,
        backend: TransformersBackend,
        run: Run,
        queue: list[list[tuple[int, list[int]]]],
        held: list[tuple[int, list[int]]],
    ) -> None:
        self.backend, self.run, self.queue, self.held = backend, run, queue, held

    def _next(self, width: int, running: int) -> list[tuple[int, list[int]]]:
        run, units, rows = self.run, [], running
        for unit in (unit for group in self.queue for unit in group):
            width = max(width, *(len(run.ids[i]) for i in unit[1]))
            if rows + len(unit[1]) > self.backend._decode_rows(run.loaded, run.budget, width + run.max_tokens):
                break
            units.append(unit)
            rows += len(unit[1])
        return units

    def fits(self, width: int, running: int) -> bool:
        return bool(self._next(width, running))

    def take(self, width: int, running: int) -> tuple[tuple[Any, Any, Any, Any], list[int]] | None:
        run = self.run
        units = self._next(width, running)
        if not units:
            return None
        for _ in units:  # out of the queue, in order
            self.queue[0].pop(0)
            if not self.queue[0]:
                self.queue.pop(0)
        self.held.extend(units)
        parts = []
        for side, chunk in units:
            with self.backend._active(run.models[side]):
                parts.append(self.backend._prefill(run.loaded, [run.ids[i] for i in chunk], run.memos[side]))
        run.report()
        return merge_prefills(parts), run.label(units)


def static_wanted(loaded: _Loaded, steps: int, forced: bool | None = None) -> bool:
    """Whether the static-cache decoder applies: on CUDA (or where the ``static_decode``
    option forces it: the CPU runs the same steps without a graph, for tests), with sdpa or
    eager attention and plain cache layers, unless ``FTGATE_CUDA_GRAPHS=0`` or it failed
    once for this model, for two steps or more."""
    from transformers import DynamicCache

    wanted = forced
    if wanted is None:
        wanted = loaded.device.startswith("cuda") and os.environ.get(CUDA_GRAPHS_ENV, "1") != "0"
    if not wanted or loaded.static_failed or steps < 2:
        return False
    if loaded.model.config._attn_implementation not in ("sdpa", "eager"):
        return False
    return plain_cache(loaded.model, DynamicCache(config=loaded.model.config))

def static_decoder(
    loaded: _Loaded, cache: Any, mask: Any, position: Any, tokens: Any, steps: int, forced: bool | None = None
) -> StaticDecoder | None | bool:
    """The static-cache decoder for this batch (CUDA graphs on a GPU), None where it does not
    apply (``static_wanted``), False where it failed (then the backend stops trying it for
    this model)."""
    import torch

    if not static_wanted(loaded, steps, forced) or not plain_cache(loaded.model, cache):
        return None
    try:
        decoder = StaticDecoder(loaded.model, cache, mask, position, tokens, steps, graph=tokens.is_cuda)
        decoder.warm()  # the first step, eagerly: failures show before any token is read
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as exc:  # a model whose forward the static path cannot drive
        loaded.static_failed = True
        warnings.warn(
            f"ftgate: static-cache decoding failed for {loaded.path} ({type(exc).__name__}: {exc}); "
            "decoding with a dynamic cache instead",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    return decoder


def eos_ids(loaded: _Loaded) -> set[int]:
    """The token ids that end a sequence, as ``generate`` would take them."""
    ids: set[int] = set()
    for value in (loaded.model.generation_config.eos_token_id, loaded.tokenizer.eos_token_id):
        if value is None:
            continue
        ids.update(value if isinstance(value, (list, tuple)) else [value])
    return ids

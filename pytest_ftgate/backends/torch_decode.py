"""The prefill and decode loop of the ``transformers`` backend: prompts through the model with
shared prefixes computed once (``prefill``), then greedy steps on a static cache replayed from a
CUDA graph (``torch_graphs.StaticDecoder``) or on the dynamic cache (``decode_prefilled``).

Imported only by ``backends/transformers.py``; torch and transformers are imported inside the
functions, so importing this module stays light.
"""

from __future__ import annotations

import functools
import os
import warnings
from typing import TYPE_CHECKING, Any

from pytest_ftgate.backends.base import StopRule
from pytest_ftgate.backends.local import decode_step
from pytest_ftgate.backends.prefix import prefix_plan
from pytest_ftgate.backends.torch_graphs import (
    StaticDecoder,
    cache_arg,
    greedy,
    plain_cache,
    planned_forward,
    prefix_states,
)

if TYPE_CHECKING:
    from pytest_ftgate.backends.transformers import _Loaded

CUDA_GRAPHS_ENV = "FTGATE_CUDA_GRAPHS"  # "0": decode with a dynamic cache on CUDA too


def prefill(
    loaded: _Loaded, ids: list[list[int]], memo: dict[str, Any] | None = None
) -> tuple[Any, Any, Any, Any]:
    """The prompts through the model: (last-position logits, attention mask, next position
    ids, cache). The layout is exact for sliding windows of any length.

    The batch is an ordinary left-padded one (``torch_graphs.planned_forward``). Token prefixes
    that rows share are computed once (``prefix.prefix_plan``): the heads' prefixes run in
    passes of their own (``torch_graphs.prefix_states``, as deep as the plan goes), their keys
    and values are copied into the rows' first cache slots, and the model then runs only the
    remaining slots. ``memo`` keeps the last prefix pass, so the batches of one call compute a
    prefix they share (the system prompt) once."""
    from transformers import DynamicCache

    cache = DynamicCache(config=loaded.model.config)
    plan = prefix_plan(ids) if plain_cache(loaded.model, cache) else None
    states = None
    if plan is not None:
        memo = {} if memo is None else memo
        if memo.get("prefixes") != plan.prefixes:
            memo.update(prefixes=plan.prefixes, states=prefix_states(loaded, plan.prefixes, plan=plan.sub))
        states = memo["states"]
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
    None when the static decoder failed to start (``forced``: the ``static_decode`` option)."""
    import torch

    logits, mask, position, cache = prefilled
    next_tokens = greedy(logits[:, -1])
    static = static_decoder(loaded, cache, mask, position, next_tokens, max_tokens, forced)
    if static is False:
        return None
    out: list[list[int]] = [[] for _ in range(mask.shape[0])]
    active: list[int | None] = list(range(mask.shape[0]))  # batch row -> output row (None: finished)
    texts = functools.partial(loaded.tokenizer.batch_decode, skip_special_tokens=True)
    for step in range(max_tokens):
        tokens = (static.current() if static else next_tokens).tolist()
        if static and step < max_tokens - 1:
            # the next step does not depend on which rows finish here: the GPU runs it while
            # the host checks the stop rules (at worst one step is computed in vain)
            static.advance()
        keep = decode_step(
            tokens, active, out, eos=eos.__contains__, max_tokens=max_tokens, stop=stop, texts=texts
        )
        if not keep:
            break
        if static:  # fixed shapes: finished rows stay in the batch, their tokens unread
            kept = set(keep)
            active = [row if slot in kept else None for slot, row in enumerate(active)]
            continue
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

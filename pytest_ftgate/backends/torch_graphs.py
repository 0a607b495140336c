"""Torch decode machinery of the ``transformers`` backend: the static-cache decoder replayed from a
CUDA graph (``StaticDecoder``), greedy token choice that flags non-finite logits (``greedy``), the
keys and values of shared prompt prefixes (``prefix_states``), and facts about a model's KV cache
(``plain_cache``, ``row_bytes``, ``cache_arg``).

Imported only by ``backends/transformers.py``; torch and transformers are imported inside the
functions, so importing this module stays light.
"""

from __future__ import annotations

import re
import warnings
import weakref
from typing import Any

from pytest_ftgate.backends.prefix import PrefixPlan
from pytest_ftgate.errors import BackendError

_KV_PROJECTION = re.compile(r"layers\.(\d+)\.self_attn\.[kv]_proj$")


class StaticDecoder:
    """Greedy decode steps of one batch on a static cache, captured in a CUDA graph on a GPU.

    A decode step of a few-billion-parameter model is bound by kernel launches (hundreds of small
    kernels, LoRA adds more), not by the GPU's arithmetic: replaying a captured graph launches
    them all at once. Graphs need fixed shapes and addresses, so: the dynamic cache after the
    prefill is copied into preallocated ``StaticLayer`` buffers (full-attention layers: every slot
    up to prompt + ``steps``; sliding-window layers: only the slots a window can still reach),
    the attention masks are built in the step from a slot counter (for full attention: the
    padding mask; for sliding attention: also ``slot > current - window``, as transformers'
    masks count slots), position ids and tokens are updated in place, and finished rows stay in
    the batch (their tokens are not read). The first step runs eagerly (it warms up the kernels
    and shows any failure before a token is read); the second is captured and replayed from then
    on. Since no step depends on which rows finished, ``_decode`` launches each step before the
    host reads the previous tokens' texts for the stop rules: the two overlap. The host reads
    ``shown``: the tokens, or -1 where the logits were not finite (``greedy``); the steps feed
    themselves valid ids. On a CPU (tests) every step runs eagerly."""

    def __init__(
        self, model: Any, cache: Any, mask: Any, position: Any, tokens: Any, steps: int, *, graph: bool
    ) -> None:
        import torch
        from transformers.cache_utils import Cache, DynamicSlidingWindowLayer, StaticLayer

        self.model = model
        rows, width = mask.shape
        total = width + steps
        values = model.config.get_text_config(decoder=True).to_dict()
        window = int(values.get("sliding_window") or 0)
        self.base = max(width - window + 1, 0) if window else 0  # first slot a sliding window still reaches
        layers: list[Any] = []
        self.bases: list[int | None] = []  # per layer: the first slot its buffer holds (None: holds none)
        kinds = set()
        for layer in cache.layers:
            if not getattr(layer, "is_initialized", False) or getattr(layer, "keys", None) is None:
                layers.append(StaticLayer(total))  # never updated (a KV-shared layer)
                self.bases.append(None)
                continue
            sliding = isinstance(layer, DynamicSlidingWindowLayer)
            kinds.add(sliding)
            base = self.base if sliding else 0
            self.bases.append(base)
            static = StaticLayer(total - base)
            static.lazy_initialization(layer.keys, layer.values)
            held = layer.keys.shape[-2]  # the dynamic layer holds slots [width - held, width)
            static.keys[:, :, width - held - base : width - base].copy_(layer.keys)
            static.values[:, :, width - held - base : width - base].copy_(layer.values)
            static.cumulative_length.fill_(width - base)
            layer.keys = layer.values = None  # freed as we go: one copy of the cache at a time
            layers.append(static)
        types = list(values.get("layer_types") or [])
        if len(kinds) > 1 and not {"full_attention", "sliding_attention"} <= set(types):
            raise BackendError("mixed full and sliding-window layers without layer_types")
        self.kinds = kinds
        self.window = window
        self.cache = Cache(layers=layers)
        self.eager = model.config._attn_implementation == "eager"
        self.dtype = next(model.parameters()).dtype
        device = mask.device
        self.seen = torch.zeros((rows, total), dtype=torch.bool, device=device)
        self.seen[:, :width] = mask.bool()
        self.slots = torch.arange(total, device=device)
        self.current_slot = torch.full((1,), width, dtype=torch.long, device=device)
        self.first = tokens.clone()
        self.tokens = tokens.clamp(min=0)
        self.shown = tokens.clone()
        self.position = position.clone()
        self.use_graph = graph
        self.graph: Any = None
        self.pending = False
        self.width = width
        self.launched = 0  # steps launched so far (the slot counter, known on the host)

    def _masks(self) -> Any:
        import torch

        def form(allowed: Any) -> Any:
            allowed = allowed[:, None, None, :]
            if not self.eager:
                return allowed
            zero = torch.zeros((), dtype=self.dtype, device=allowed.device)
            return torch.where(allowed, zero, torch.finfo(self.dtype).min)

        masks = {}
        if False in self.kinds:
            masks["full_attention"] = form(self.seen)
        if True in self.kinds:
            near = self.slots > self.current_slot - self.window
            masks["sliding_attention"] = form((self.seen & near)[:, self.base :])
        return masks if len(masks) > 1 else next(iter(masks.values()))

    def _step(self) -> None:
        self.seen.index_fill_(1, self.current_slot, True)
        output = self.model(
            input_ids=self.tokens[:, None],
            attention_mask=self._masks(),
            position_ids=self.position,
            **cache_arg(self.model, self.cache),
            use_cache=True,
            logits_to_keep=1,
        )
        self.shown.copy_(greedy(output.logits[:, -1]))
        self.tokens.copy_(self.shown.clamp(min=0))
        self.position.add_(1)
        self.current_slot.add_(1)

    def warm(self) -> None:
        """The first step, eagerly (on a side stream on a GPU, as graph capture wants)."""
        import torch

        if self.use_graph:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self._step()
            torch.cuda.current_stream().wait_stream(stream)
        else:
            self._step()
        self.pending = True
        self.launched += 1

    def current(self) -> Any:
        """This step's tokens (the prefill's first, while the step computed ahead is unread)."""
        return self.first if self.pending else self.shown

    def advance(self) -> None:
        import torch

        if self.pending:
            self.pending = False
            return
        self.launched += 1
        if self.use_graph and self.graph is None:
            try:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    self._step()
                self.graph = graph
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as exc:  # capture refused (a host sync in the forward): eager steps
                self.use_graph = False
                torch.cuda.synchronize()
                warnings.warn(
                    f"ftgate: CUDA graph capture failed ({type(exc).__name__}: {exc}); decoding without graphs",
                    RuntimeWarning,
                    stacklevel=2,
                )
        if self.graph is not None:
            self.graph.replay()
        else:
            self._step()

    def carry(self, keep: list[int]) -> tuple[Any, Any, Any, Any]:
        """Rows ``keep`` as a prefilled batch (next tokens, attention mask, next positions, dynamic
        cache), to go on in another decode batch (``torch_decode.decode_stream``). Called after
        ``advance``: the step launched last has run, so its tokens are the rows' next ones and
        its keys and values are in the cache. Sliding-window layers keep their last window."""
        import torch
        from transformers import DynamicCache

        index = torch.tensor(keep, device=self.seen.device)
        written = self.width + self.launched
        cache = DynamicCache(config=self.model.config)
        for number, (layer, base) in enumerate(zip(self.cache.layers, self.bases, strict=True)):
            if base is not None:
                cache.layers[number].update(layer.keys[index, :, : written - base], layer.values[index, :, : written - base])
        mask = self.seen[index, :written].long()
        return self.shown[index].clone(), mask, self.position[index].clone(), cache


def greedy(logits: Any) -> Any:
    """Each row's argmax, or -1 where the chosen logit is not finite. argmax takes NaN for the
    largest value, so a row holding any NaN or +inf (or only -inf) gives -1: one gather, no sync."""
    import torch

    tokens = logits.argmax(-1)
    chosen = logits.gather(-1, tokens[:, None])[:, 0]
    return torch.where(torch.isfinite(chosen), tokens, -1)


def plain_cache(model: Any, cache: Any) -> bool:
    """Whether ``_prefill`` may fill ``cache`` from a prefix pass: full and sliding-window
    attention only, in transformers' plain dynamic layers (or KV-shared placeholders)."""
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    types = model.config.get_text_config(decoder=True).to_dict().get("layer_types") or []
    if any(kind not in ("full_attention", "sliding_attention") for kind in types):
        return False
    allowed = (DynamicLayer, DynamicSlidingWindowLayer)
    return all(type(layer) in allowed or type(layer).__name__ == "DummyLayer" for layer in cache.layers)


def row_bytes(model: Any, length: int) -> int:
    """Estimated GPU bytes one batch row of ``length`` tokens needs: its KV cache (``kv_bytes``),
    prefill activations and one layer's attention weights."""
    values = model.config.get_text_config(decoder=True).to_dict()  # raw values: no per-layer lookups
    element = 2 if str(model.dtype).endswith(("float16", "bfloat16")) else 4
    hidden = int(values.get("hidden_size") or 1024)
    heads = int(values.get("num_attention_heads") or 8)
    intermediate = int(values.get("intermediate_size") or 4 * hidden)
    activations = length * (8 * hidden + 3 * intermediate) * element
    scores = heads * length * length * 4  # attention weights, in case the kernel materialises them
    return kv_bytes(model, length) + activations + scores


def kv_bytes(model: Any, length: int) -> int:
    """Bytes of one row's KV cache at ``length`` tokens, from the k/v projections' widths
    (sliding-window layers capped at the window, KV-shared layers free)."""
    values = model.config.get_text_config(decoder=True).to_dict()
    element = 2 if str(model.dtype).endswith(("float16", "bfloat16")) else 4
    layers = int(values.get("num_hidden_layers") or 1)
    shared = int(values.get("num_kv_shared_layers") or 0)
    types = list(values.get("layer_types") or ["full_attention"] * layers)
    window = int(values.get("sliding_window") or length)
    widths = _kv_widths(model)
    kv = 0
    for index in range(layers - shared):
        kept = min(length, window) if index < len(types) and types[index] == "sliding_attention" else length
        kv += widths.get(index, 0) * kept * element
    return kv


def _kv_widths(model: Any) -> dict[int, int]:
    """Per layer, the k and v projections' output widths, walked once per model (the decode
    stream asks at every step whether the next prompts fit); held only while the model lives."""
    if model not in _WIDTHS:
        widths: dict[int, int] = {}
        for name, module in model.named_modules():
            found = _KV_PROJECTION.search(name)
            if found and hasattr(module, "out_features"):
                widths[int(found[1])] = widths.get(int(found[1]), 0) + int(module.out_features)
        _WIDTHS[model] = widths
    return _WIDTHS[model]


_WIDTHS: weakref.WeakKeyDictionary[Any, dict[int, int]] = weakref.WeakKeyDictionary()


def merge_prefills(parts: list[tuple[Any, Any, Any, Any]]) -> tuple[Any, Any, Any, Any]:
    """Prefilled batches as one: (logits, mask, next positions, cache) of each, rows stacked.
    Every batch is left padded, so its rows end at its last slot; the narrower ones get more
    padding on the left (masked slots, zero keys and values) until all end at the widest one's
    last slot: each row sees what it saw alone, and a sliding window (which counts slots back
    from the current one) too. The first batch's cache holds the result; the others' layers are
    freed as they are copied, one layer at a time."""
    import torch
    from torch.nn.functional import pad

    if len(parts) == 1:
        return parts[0]
    width = max(mask.shape[1] for _, mask, _, _ in parts)
    logits = torch.cat([part[0] for part in parts])
    mask = torch.cat([pad(m, (width - m.shape[1], 0)) for _, m, _, _ in parts])
    position = torch.cat([part[2] for part in parts])
    caches = [part[3] for part in parts]
    for number, layer in enumerate(caches[0].layers):
        if not getattr(layer, "is_initialized", False) or getattr(layer, "keys", None) is None:
            continue  # a KV-shared layer: holds nothing
        layers = [cache.layers[number] for cache in caches]
        if any(type(other) is not type(layer) for other in layers):
            raise BackendError("batches to merge have different cache layer types")
        # each holds its last `held` slots (all of them; a sliding window's last ones): aligned
        # on the right, the longest span is kept, and what a row lacks of it is padding or out
        # of its window for good
        held = [other.keys.shape[-2] for other in layers]
        span = max(held)
        for part in ("keys", "values"):
            tensors = [pad(getattr(other, part), (0, 0, span - h, 0)) for other, h in zip(layers, held, strict=True)]
            setattr(layer, part, torch.cat(tensors))
        for other in layers[1:]:
            other.keys = other.values = None
    return logits, mask, position, caches[0]


def cache_arg(model: Any, cache: Any) -> dict[str, Any]:
    """The KV cache keyword of ``model``'s forward: ``cache`` since transformers 5.2x,
    ``past_key_values`` before (still accepted, with a deprecation warning)."""
    import inspect

    kind = type(model)
    if kind not in _CACHE_KEYWORD:
        _CACHE_KEYWORD[kind] = "cache" if "cache" in inspect.signature(kind.forward).parameters else "past_key_values"
    return {_CACHE_KEYWORD[kind]: cache}


_CACHE_KEYWORD: dict[type, str] = {}


def prefix_states(
    loaded: Any,
    prefixes: list[list[int]],
    together: bool | None = None,
    plan: PrefixPlan | None = None,
    memo: dict[str, Any] | None = None,
) -> list[tuple[Any, Any] | None]:
    """Each layer's keys and values for ``prefixes``, left padded to the longest: (groups,
    heads, span, dim), every position kept (sliding-window layers too: rows take different
    spans); None for layers that hold none (KV-shared ones). ``plan``: the prefixes' own
    ``PrefixPlan`` (``PrefixPlan.sub``): what they share comes from a pass below this one
    (planned the same way, so as deep as the plan goes), and this pass runs only the rest.
    Without one, on a GPU one left-padded pass; on a CPU one pass per prefix, unpadded (a CPU
    pass gains nothing from more rows, and long masked prompts take the slower attention path).
    ``memo`` keeps the last single prefix's states (a pass whose one head all rows share: the
    system prompt) at every level, the level below's under ``"below"``: the next batch's system
    prompt is not computed again, and many heads' states (GBs on a GPU) are not held."""
    import torch
    from transformers import DynamicCache

    if memo is not None and memo.get("prefixes") == prefixes:
        return list(memo["states"])
    span = max(len(p) for p in prefixes)
    together = loaded.device.startswith("cuda") if together is None else together
    per_pass = []
    if plan is not None:
        below = prefix_states(loaded, plan.prefixes, together, plan.sub, None if memo is None else memo.setdefault("below", {}))
        per_pass.append((DynamicCache(), 0))  # no config: every layer keeps every position
        planned_forward(loaded, prefixes, per_pass[0][0], plan, below)
    else:
        for rows in [prefixes] if together else [[p] for p in prefixes]:
            per_pass.append((DynamicCache(), span - max(len(p) for p in rows)))
            planned_forward(loaded, rows, per_pass[-1][0], masked=together)  # one unpadded row: plain causal
    out: list[tuple[Any, Any] | None] = []
    for number in range(len(per_pass[0][0].layers)):
        layers = [(states.layers[number], missing) for states, missing in per_pass]
        first = layers[0][0]
        if not getattr(first, "is_initialized", False) or first.keys is None or first.keys.numel() == 0:
            out.append(None)
            continue
        out.append(
            tuple(
                torch.cat(
                    [torch.nn.functional.pad(getattr(layer, part), (0, 0, missing, 0)) for layer, missing in layers]
                )
                for part in ("keys", "values")
            )
        )
    if memo is not None:  # one prefix shared by a whole batch (the system prompt) is kept; others are not
        memo.pop("prefixes", None)
        memo.pop("states", None)
        if len(prefixes) == 1:
            memo.update(prefixes=prefixes, states=out)
    return out


def planned_forward(
    loaded: Any,
    ids: list[list[int]],
    cache: Any,
    plan: PrefixPlan | None = None,
    states: list[tuple[Any, Any] | None] | None = None,
    masked: bool = True,
) -> tuple[Any, Any, Any]:
    """``ids``, left padded, through the model into ``cache``: (output, attention mask, position
    ids). Padding is masked and position ids count real tokens only, as ``generate`` does, so
    every row computes what it computes alone. With a ``plan``, the first ``plan.start`` slots
    of every row are copied from ``states`` (``prefix_states`` of ``plan.prefixes``: row r's
    slot t from position ``plan.slots[r][t]`` of its head ``plan.owner[r]``) and the model runs
    the remaining slots only. Only the last position's logits are computed."""
    import torch

    device = loaded.model.device
    pad = loaded.tokenizer.pad_token_id
    width = max(len(row) for row in ids)
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in ids], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    start = 0
    if plan is not None and states is not None:
        start = plan.start
        # plan.slots, computed here: row r's slot t <- offset + max(t - (start - real), 0)
        reals, offsets = (torch.tensor(v, device=device)[:, None] for v in (plan.reals, plan.offsets))
        slots = offsets + (torch.arange(start, device=device)[None, :] - (start - reals)).clamp(min=0)
        groups = torch.tensor(plan.owner, device=device)[:, None]
        for number, state in enumerate(states):
            if state is not None:
                keys, values = (part.transpose(1, 2)[groups, slots].transpose(1, 2).contiguous() for part in state)
                cache.update(keys, values, number)
    input_ids = torch.tensor([[pad] * (width - len(row)) + row for row in ids], device=device)[:, start:]
    output = loaded.model(
        input_ids=input_ids,
        attention_mask=mask if masked else None,
        position_ids=positions[:, start:],
        **cache_arg(loaded.model, cache),
        use_cache=True,
        logits_to_keep=1,
    )
    return output, mask, positions

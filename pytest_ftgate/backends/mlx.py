"""The ``mlx`` backend: Gemma 4 (and other VLMs) through mlx-vlm, text-only models through mlx-lm.

Loading follows the seed study: ``mlx_vlm.load`` for the model and processor, the processor's chat
template with the system message, greedy decoding. Adapters are injected the way mlx-tune does it
(``FastVisionModel.get_peft_model`` with the adapter's own rank, scale and targets, then
``load_weights``), on the already loaded base, so base and tuned share one copy of the weights:
the LoRA layers are swapped in for the tuned model and out for the base. A folder whose
``config.json`` has no ``vision_config`` is a text-only model and goes through ``mlx_lm.load`` and
mlx-lm's own LoRA layers instead.

Evaluation is batched with left padding in mlx-lm's batch KV caches; a prompt prefix that rows
share (the system prompt; a ConvFinQA conversation's document and earlier turns) runs once and
its keys and values are copied to the rows (``prefix.py``).
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pytest_ftgate.adapters import AdapterInfo
from pytest_ftgate.backends import Message, Model, Prompts, StopRule, check_scores, package_versions
from pytest_ftgate.backends import mlx_adapters
from pytest_ftgate.backends.local import EFFECT_PROMPT, LocalBackend, decode_step, renamed_non_finite
from pytest_ftgate.backends.prefix import PASS_COST_CPU, PrefixPlan, plan_batches, prefix_plan
from pytest_ftgate.errors import BackendError, ModelError, NonFiniteError
from pytest_ftgate.fingerprint import digest, model_parts

# Batch sizing without --ftgate-batch-size: tokens per forward pass, and a ceiling on rows.
TOKENS_PER_BATCH = 4096
MAX_ROWS = 8  # measured on 2 CPU cores: more rows only add padding
PREFILL_CHUNK = 512  # prompt tokens per forward pass while filling the KV cache


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """mlx-tune and mlx-vlm print progress lines and warnings; keep pytest's output clean."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        # transformers' audio feature extractor warns about mel filters when mlx-vlm builds the
        # Gemma 4 processor; it is irrelevant to text evaluation.
        warnings.filterwarnings("ignore", message="At least one mel filter has all zero values")
        yield


@dataclass
class _Loaded:
    """One loaded base: the mlx model, its processor or tokenizer, and the LoRA layers injected."""

    model: Any
    processor: Any
    path: str
    vision: bool = True  # mlx-vlm model (else mlx-lm)
    lora: dict[str, Any] = field(default_factory=dict)  # module path -> LoRA module
    plain: dict[str, Any] = field(default_factory=dict)  # module path -> original linear
    adapter: str | None = None  # fingerprint of the adapter injected (swapped in or out)
    active: str | None = None  # fingerprint of the adapter now swapped in
    context: int | None = None  # max_position_embeddings of config.json (its text_config for a VLM)

    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)


class MLXBackend(LocalBackend):
    """Backend over mlx-vlm / mlx-lm, with adapters injected the mlx-tune way."""

    name = "mlx"
    capabilities = replace(LocalBackend.capabilities, progress=True)

    def version(self) -> str:
        return package_versions("mlx", "mlx-vlm", "mlx-lm", "mlx-tune")

    # -- loading -----------------------------------------------------------------------------

    def _path(self, model: str) -> Path:
        local = Path(model).expanduser()
        if local.exists() and not (local / "config.json").is_file():
            raise ModelError(f"{local} has no config.json: point --ftgate-base at a model folder")
        try:
            return local.resolve() if local.exists() else _snapshot_path(model)
        except Exception as exc:  # the hub client raises many kinds; the user needs one sentence
            raise ModelError(
                f"could not find model {model} locally or on the hub: {type(exc).__name__}: {exc}"
            ) from exc

    def describe(self, model: str) -> dict[str, str]:
        """Fingerprint parts of a model (files hashed, nothing loaded)."""
        return {**model_parts(self._path(model)), "backend": f"{self.name} {self.version()}"}

    def load(self, model: str) -> Model:
        path = self._path(model)
        try:
            config = json.loads((path / "config.json").read_text())
            vision = "vision_config" in config
            with _quiet():
                if vision:
                    import mlx_vlm

                    mx_model, processor = mlx_vlm.load(str(path))
                else:
                    import mlx_lm

                    mx_model, processor = mlx_lm.load(str(path))
        except Exception as exc:  # the loaders raise many kinds; the user needs one sentence
            raise ModelError(f"mlx could not load model {model}: {type(exc).__name__}: {exc}") from exc
        sizes = [c.get("max_position_embeddings") for c in (config.get("text_config"), config) if isinstance(c, dict)]
        context = next((size for size in sizes if isinstance(size, int) and size > 0), None)
        loaded = _Loaded(mx_model, processor, str(path), vision=vision, context=context)
        return Model(label=model, fingerprint=digest(self.describe(model)), backend=self, handle=loaded)

    # -- adapters (the steps of LocalBackend.with_adapter) -------------------------------------

    def has_adapter(self, handle: _Loaded, fingerprint: str) -> bool:
        return handle.adapter == fingerprint

    def prepare_adapter(self, handle: _Loaded, info: AdapterInfo) -> tuple[AdapterInfo, dict[str, Any]]:
        """The adapter's weights in mlx naming, after checking that each lands on a module of the
        base with the right shape (before any LoRA layer is added)."""
        if handle.adapter is not None:
            raise BackendError("the mlx backend injects one adapter per loaded base; load the base again for another")
        weights = mlx_adapters.read_weights(info)
        mlx_adapters.check_fit(handle, info, weights)
        return info, weights

    def attach_adapter(self, handle: _Loaded, fingerprint: str, prepared: tuple[AdapterInfo, dict[str, Any]]) -> None:
        """Add LoRA layers (mlx-tune's way for a VLM, mlx-lm's otherwise) and load the weights."""
        info, weights = prepared
        handle.adapter = fingerprint
        with _quiet():
            if handle.vision:
                mlx_adapters.add_vlm_lora(handle, info)
            else:
                mlx_adapters.add_lm_lora(handle, info, weights)
        handle.model.load_weights(list(weights.items()), strict=False)
        handle.model.eval()
        for name, module in handle.model.named_modules():
            if hasattr(module, "lora_a") and hasattr(module, "linear"):
                handle.lora[name] = module
                handle.plain[name] = module.linear
        handle.active = fingerprint

    def detach_adapter(self, handle: _Loaded, fingerprint: str) -> None:
        """Put every original linear back in place of its LoRA layer: the base as it was loaded."""
        if handle.adapter not in (None, fingerprint):
            return
        from mlx.utils import tree_unflatten

        wrapped = [
            (name, module.linear)
            for name, module in handle.model.named_modules()
            if hasattr(module, "lora_a") and hasattr(module, "linear")
        ]
        if wrapped:
            handle.model.update_modules(tree_unflatten(wrapped))
        handle.lora.clear()
        handle.plain.clear()
        handle.adapter = handle.active = None

    def _activate(self, loaded: _Loaded, adapter: str | None) -> None:
        """Swap LoRA layers in (adapter) or out (None). Cheap: only module references move. A
        Model whose adapter was taken off (``release_adapter``) never runs another one's layers."""
        if adapter is not None and adapter != loaded.adapter:
            raise BackendError("this model's adapter is no longer on the loaded base: put it on again (with_adapter)")
        if loaded.active == adapter or not loaded.lora:
            return
        from mlx.utils import tree_unflatten

        source = loaded.plain if adapter is None else loaded.lora
        loaded.model.update_modules(tree_unflatten(list(source.items())))
        loaded.active = adapter

    # -- inference ---------------------------------------------------------------------------

    def _prompt(self, loaded: _Loaded, messages: Sequence[Message]) -> str:
        if loaded.vision:
            from mlx_vlm.prompt_utils import apply_chat_template

            return str(apply_chat_template(loaded.processor, loaded.model.config, list(messages), num_images=0))
        return str(loaded.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True))

    def effect_logits(self, model: Model) -> Any:
        """Logits of every position of ``EFFECT_PROMPT`` (the effect check: an adapter acts)."""

        loaded: _Loaded = model.handle
        self._activate(loaded, model.adapter)
        return self._logits(
            loaded, list(loaded.tokenizer.encode(self._prompt(loaded, EFFECT_PROMPT), add_special_tokens=False))
        )

    def context_length(self, model: Model) -> int | None:
        """``max_position_embeddings`` of the model's config.json (None when it has none)."""
        return model.handle.context  # type: ignore[no-any-return]

    def prompt_ids(self, model: Model, messages: Sequence[Message]) -> list[int]:
        return self._ids(model.handle, messages)

    @property
    def default_batch_size(self) -> int:
        """Examples the runner hands over per call (its unit of caching and progress); the backend
        cuts them into batches itself."""
        return 64

    def auto_batch_size(self, length: int) -> int:
        """Rows per batch for sequences of up to ``length`` tokens: a token budget per forward
        pass (measured on Linux CPU; more rows add padding and cache traffic, not speed)."""
        return max(1, min(MAX_ROWS, TOKENS_PER_BATCH // max(length, 1)))

    def _ids(self, loaded: _Loaded, messages: Sequence[Message]) -> list[int]:
        return list(loaded.tokenizer.encode(self._prompt(loaded, messages), add_special_tokens=False))

    def _forward(self, loaded: _Loaded, tokens: Any, cache: list[Any]) -> Any:
        """Logits (batch, positions, vocabulary) of the language model over ``tokens``."""
        language = loaded.model.language_model if loaded.vision else loaded.model
        output = language(tokens, cache=cache)
        return getattr(output, "logits", output)

    def _batch_cache(self, loaded: _Loaded, pads: list[int], full: bool = False) -> list[Any] | None:
        """A left-padded batch KV cache shaped like the model's own (``BatchKVCache`` per full
        attention layer, ``BatchRotatingKVCache`` per sliding one; ``full``: ``BatchKVCache`` for
        both, which keeps every position while the model's masks still apply the window): padded
        keys are masked and each row's positions start at its first real token, so a row
        computes what it would alone. None when the model uses a cache kind that has no batch form."""
        if loaded.vision:
            from mlx_vlm.models import cache as caches

            template = loaded.model.language_model.make_cache()
        else:
            from mlx_lm.models import cache as caches

            template = caches.make_prompt_cache(loaded.model)
        batch = []
        for layer in template:
            if type(layer) is caches.KVCache:
                batch.append(caches.BatchKVCache(pads))
            elif type(layer) is caches.RotatingKVCache and getattr(layer, "keep", 0) == 0:
                batch.append(caches.BatchKVCache(pads) if full else caches.BatchRotatingKVCache(layer.max_size, pads))
            else:
                return None
        return batch

    def _prefill(self, loaded: _Loaded, ids: list[list[int]]) -> tuple[Any, list[Any]]:
        """The prompts through the model, left padded: (last-position logits, cache).

        A prefix that rows share (the system prompt and chat template; a ConvFinQA document shared
        by the turns of a conversation) is computed once (``prefix.prefix_plan``, ``_seed_cache``).
        The rest but the last token goes in chunks of ``PREFILL_CHUNK`` whose logits are never
        evaluated (MLX is lazy: the vocabulary projection is skipped), as ``mlx_lm.generate``
        does; sliding window layers then attend to a window plus a chunk, not to the whole prompt.
        The last token goes alone, so only its logits are computed."""
        import mlx.core as mx

        width = max(len(row) for row in ids)
        pads = [width - len(row) for row in ids]
        # one row: the model's own cache (and its fused causal attention, no mask array)
        cache = self._batch_cache(loaded, pads) if len(ids) > 1 else self._single_cache(loaded)
        if cache is None:
            raise BackendError("this model's KV cache has no batched form")
        plan = prefix_plan(ids, PASS_COST_CPU) if len(ids) > 1 else None
        start = 0
        if plan is not None:
            start = plan.start
            self._seed_cache(loaded, cache, plan)
        tokens = mx.array([[0] * pad + row for pad, row in zip(pads, ids, strict=True)])
        self._chunks(loaded, tokens[:, start:-1], cache)
        return self._forward(loaded, tokens[:, -1:], cache)[:, -1, :], cache

    def _chunks(self, loaded: _Loaded, tokens: Any, cache: list[Any]) -> None:
        """``tokens`` into ``cache``, ``PREFILL_CHUNK`` positions per forward pass (logits unused)."""
        import mlx.core as mx

        for begin in range(0, tokens.shape[1], PREFILL_CHUNK):
            self._forward(loaded, tokens[:, begin : begin + PREFILL_CHUNK], cache)
            mx.eval([c.state for c in cache])

    def _seed_cache(self, loaded: _Loaded, cache: list[Any], plan: PrefixPlan) -> None:
        """Fill the first ``plan.start`` slots of every row of ``cache`` from one pass over the
        heads' prefixes (one left-padded row per head, every position kept; seeded the same way
        from ``plan.sub``), as if the batch's first prefill chunk had been those slots."""
        import mlx.core as mx

        span = plan.span
        heads = self._batch_cache(loaded, [span - len(p) for p in plan.prefixes], full=True)
        assert heads is not None  # the batch cache exists, so its full form does
        start = 0
        if plan.sub is not None:  # what the prefixes share, from a pass below (as deep as the plan goes)
            self._seed_cache(loaded, heads, plan.sub)
            start = plan.sub.start
        self._chunks(loaded, mx.array([[0] * (span - len(p)) + p for p in plan.prefixes])[:, start:], heads)
        groups = mx.array(plan.owner)[:, None]
        # plan.slots, computed here: row r's slot t <- offset + max(t - (start - real), 0)
        reals, offsets = (mx.array(v)[:, None] for v in (plan.reals, plan.offsets))
        slots = offsets + mx.maximum(mx.arange(plan.start)[None, :] - (plan.start - reals), 0)
        for target, source in zip(cache, heads, strict=True):
            # (groups, heads, span, dim) -> (rows, heads, start, dim): row r, slot t <- plan.slots[r][t]
            keys = source.keys[..., :span, :].transpose(0, 2, 1, 3)[groups, slots].transpose(0, 2, 1, 3)
            values = source.values[..., :span, :].transpose(0, 2, 1, 3)[groups, slots].transpose(0, 2, 1, 3)
            target.update_and_fetch(keys, values)
        mx.eval([c.state for c in cache])

    def _single_cache(self, loaded: _Loaded) -> list[Any]:
        if loaded.vision:
            return list(loaded.model.language_model.make_cache())
        from mlx_lm.models.cache import make_prompt_cache

        return list(make_prompt_cache(loaded.model))

    def _eos(self, loaded: _Loaded) -> set[int]:
        """End-of-sequence ids as ``mlx_vlm.generate`` / ``mlx_lm.generate`` take them."""
        tokenizer = loaded.tokenizer
        if loaded.vision:
            criteria = tokenizer.stopping_criteria
            criteria.reset(loaded.model.config.eos_token_id)
            return {int(t) for t in criteria.eos_token_ids}
        return {int(t) for t in tokenizer.eos_token_ids}

    def score(
        self,
        model: Model,
        prompts: Prompts,
        continuations: Sequence[str],
        progress: Callable[[int], None] | None = None,
    ) -> list[list[float]]:
        """Log-probability of each continuation as the start of the reply to each prompt.

        One batched forward pass over the left-padded prompts scores every single-token
        continuation. A longer continuation is then fed on top of the batch's KV cache (all rows at
        once) and trimmed off again, so the prompts are never computed twice."""
        import mlx.core as mx

        loaded: _Loaded = model.handle
        self._activate(loaded, model.adapter)
        tokenizer = loaded.tokenizer
        pieces = [list(tokenizer.encode(c, add_special_tokens=False)) for c in continuations]
        if any(not piece for piece in pieces):
            raise BackendError(f"a continuation encodes to no tokens: {list(continuations)!r}")
        ids = [self._ids(loaded, messages) for messages in prompts]
        extra = max(len(piece) for piece in pieces) - 1
        rows: list[list[float]] = [[] for _ in ids]
        for chunk in self._batches(loaded, ids, extra, None):
            batch = [ids[i] for i in chunk]
            try:
                scores = self._score_batch(loaded, batch, pieces)
            except BackendError:
                scores = [self._score_batch(loaded, [row], pieces)[0] for row in batch]
            for index, values in zip(chunk, scores, strict=True):
                rows[index] = values
            mx.clear_cache()
            if progress is not None:
                progress(sum(1 for row in rows if row))
        return check_scores(model, rows)

    def _batches(self, loaded: _Loaded, ids: list[list[int]], extra: int, batch_size: int | None) -> list[list[int]]:
        """The prompts' indices cut into batches (``prefix.plan_batches``: groups sharing a long
        prefix together, the rest sorted by length, longest first); one prompt per batch when the
        model's cache has no batched form."""
        if self._batch_cache(loaded, [0]) is None:
            return [[i] for i in sorted(range(len(ids)), key=lambda i: -len(ids[i]))]
        return plan_batches(ids, extra, self.auto_batch_size, batch_size)

    def _score_batch(self, loaded: _Loaded, ids: list[list[int]], pieces: list[list[int]]) -> list[list[float]]:
        import mlx.core as mx

        last, cache = self._prefill(loaded, ids)
        first = _log_softmax(last.astype(mx.float32))
        totals = [first[:, piece[0]] for piece in pieces]
        for j, piece in enumerate(pieces):
            if len(piece) == 1:
                continue
            if not all(c.is_trimmable() for c in cache):
                # a cache that cannot be rolled back: score this continuation with its own pass
                logits = self._forward_rows(loaded, [row + piece[:-1] for row in ids])[:, -len(piece) + 1 :, :]
            else:
                logits = self._forward(loaded, mx.array([piece[:-1]] * len(ids)), cache)
                mx.eval(logits)
                for c in cache:
                    c.trim(len(piece) - 1)
            steps = _log_softmax(logits.astype(mx.float32))
            for k, token in enumerate(piece[1:]):
                totals[j] = totals[j] + steps[:, k, token]
        mx.eval(totals)
        return [list(values) for values in zip(*(t.tolist() for t in totals), strict=True)]

    def _forward_rows(self, loaded: _Loaded, ids: list[list[int]]) -> Any:
        """All-position logits of left-padded rows (a fresh batch cache)."""
        import mlx.core as mx

        width = max(len(row) for row in ids)
        pads = [width - len(row) for row in ids]
        cache = self._batch_cache(loaded, pads) or self._single_cache(loaded)
        return self._forward(loaded, mx.array([[0] * pad + row for pad, row in zip(pads, ids, strict=True)]), cache)

    def _logits(self, loaded: _Loaded, ids: list[int]) -> Any:
        import mlx.core as mx

        output = loaded.model(mx.array([ids]))
        return getattr(output, "logits", output)[0].astype(mx.float32)

    def generate(
        self,
        model: Model,
        prompts: Prompts,
        *,
        max_tokens: int,
        batch_size: int | None,
        stop: StopRule | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[str]:
        """Greedy replies, batched with left padding (``_batches``), the same tokens as
        ``mlx_vlm.generate`` / ``mlx_lm.generate`` one prompt at a time. A sequence leaves its
        batch (its cache rows are dropped) at end-of-sequence, at ``max_tokens``, or when
        ``stop(reply so far)`` says its answer is decided. The reply text is the decoding
        of the new tokens by their streaming detokenizer, special tokens kept, as they return it."""
        import mlx.core as mx

        loaded: _Loaded = model.handle
        self._activate(loaded, model.adapter)
        ids = [self._ids(loaded, messages) for messages in prompts]
        eos = self._eos(loaded)
        replies = [""] * len(ids)
        done = 0
        for chunk in self._batches(loaded, ids, max_tokens, batch_size):
            try:
                outputs = self._decode(loaded, [ids[i] for i in chunk], max_tokens, eos, stop)
            except NonFiniteError as exc:
                raise renamed_non_finite(model, exc, chunk) from None
            for index, tokens in zip(chunk, outputs, strict=True):
                replies[index] = _detokenize(loaded, tokens)
            mx.clear_cache()
            done += len(chunk)
            if progress is not None:
                progress(done)
        return replies

    def _decode(
        self, loaded: _Loaded, ids: list[list[int]], max_tokens: int, eos: set[int], stop: StopRule | None
    ) -> list[list[int]]:
        """Greedy decoding of one batch; returns each row's new tokens (end-of-sequence excluded).
        A row whose logits are not finite raises NonFiniteError (its ``index`` is the row)."""
        import mlx.core as mx

        last, cache = self._prefill(loaded, ids)
        next_tokens = _greedy(last)
        out: list[list[int]] = [[] for _ in ids]
        active = list(range(len(ids)))
        for _ in range(max_tokens):
            values: list[int] = next_tokens.tolist()  # type: ignore[assignment]
            keep = decode_step(
                values, active, out, eos=eos.__contains__, max_tokens=max_tokens, stop=stop,
                texts=loaded.tokenizer.batch_decode,
            )  # fmt: skip
            if not keep:
                break
            if len(keep) < len(active):
                index = mx.array(keep)
                for c in cache:
                    c.filter(index)
                next_tokens = next_tokens[index]
                active = [active[slot] for slot in keep]
            next_tokens = _greedy(self._forward(loaded, next_tokens[:, None], cache)[:, -1, :])
        return out


def _detokenize(loaded: _Loaded, tokens: list[int]) -> str:
    """The reply text exactly as ``mlx_vlm.generate`` / ``mlx_lm.generate`` build it: their streaming
    detokenizer (which, unlike ``tokenizer.decode``, leaves out bytes that never complete a
    character)."""
    detokenizer = loaded.processor.detokenizer if loaded.vision else loaded.tokenizer.detokenizer
    detokenizer.reset()
    for token in tokens:
        detokenizer.add_token(token)
    detokenizer.finalize()
    return str(detokenizer.text)


def _greedy(logits: Any) -> Any:
    """Each row's argmax, or -1 where the chosen logit is not finite. argmax takes NaN for the
    largest value, so a row holding any NaN or +inf (or only -inf) gives -1."""
    import mlx.core as mx

    tokens = mx.argmax(logits, axis=-1).astype(mx.int32)
    chosen = mx.take_along_axis(logits, tokens[:, None], axis=-1)[:, 0]
    return mx.where(mx.isfinite(chosen), tokens, -1)


def _log_softmax(logits: Any) -> Any:
    import mlx.core as mx

    return logits - mx.logsumexp(logits, axis=-1, keepdims=True)


def _snapshot_path(model: str) -> Path:
    """The local snapshot of a hub id (downloaded by the hub client when it can reach the hub)."""
    from mlx_vlm.utils import get_model_path

    return Path(get_model_path(model))

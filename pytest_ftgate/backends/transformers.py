"""The ``transformers`` backend: any causal LM through transformers + torch, adapters through peft.

Loading: ``AutoTokenizer`` (left padding, a pad token set if missing) and
``AutoModelForCausalLM.from_pretrained(path, dtype=...)``: bfloat16 on CUDA, float32 on CPU,
safetensors only (pickle weights are refused unless ``FTGATE_ALLOW_PICKLE=1``),
``trust_remote_code`` never set. Gemma 4 multimodal checkpoints come back as
``Gemma4ForConditionalGeneration``; only their text path is used.

Adapters are injected with peft on the already loaded base (``peft_adapters.py``), so base and
tuned share one copy of the weights: the tuned ``Model`` runs with its adapter active, the base
``Model`` runs inside ``PeftModel.disable_adapter()``.

Chat prompts: the tokenizer's chat template with ``add_generation_prompt=True``. A template that
rejects the system role (Gemma 2, some Mistral templates) gets the system text folded into the
first user message, ``system + "\\n\\n" + user``, the usual convention for such models.
Generation is greedy, by ftgate's own loop over the model's forward pass (the same tokens as
``generate(do_sample=False)``): batched with left padding (position ids count real tokens
only), prompts that share a long token prefix (ConvFinQA's turns of one conversation) batched
together and the rest sorted by length, a ``DynamicCache`` per batch, batch size fitted to free
GPU memory unless ``--ftgate-batch-size`` is given. A prefix that rows share (all a ConvFinQA
turn shares with its conversation's last turn; the system prompt and chat template) runs once and
its keys and values are copied to the rows (``prefix.py``). A sequence leaves its batch at
end-of-sequence, at ``max_tokens``, or when the benchmark's stop rule (``stop``) says its answer
can no longer change. On CUDA the decode steps run on a static cache and replay from a CUDA graph
(``FTGATE_CUDA_GRAPHS=0``: the dynamic loop, whose finished rows are dropped); there, prefill
batches are decoded together while their caches fit, a decode batch takes the next prompts once
half its rows have finished, and base and tuned (``generate_sides``) share decode batches with
LoRA switched per row (the loop itself: ``torch_decode.py``). Only the new tokens
are decoded (``skip_special_tokens=True``). ``score`` (``logprob`` mode) is one batched forward
pass with ``logits_to_keep=1`` for single-token answers, plus one shared-cache pass per four
longer ones.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_ftgate import threads
from pytest_ftgate.adapters import AdapterInfo
from pytest_ftgate.backends import Capabilities, Message, Model, Prompts, StopRule, check_scores, package_versions
from pytest_ftgate.backends import peft_adapters, torch_decode
from pytest_ftgate.backends.hf_files import (
    ALLOW_PICKLE_ENV,
    check_weights,
    load_failure,
    no_progress_bars,
    prepare_tokenizer,
    snapshot_path,
)
from pytest_ftgate.backends.local import EFFECT_PROMPT, LocalBackend, chat_prompt, renamed_non_finite
from pytest_ftgate.backends.prefix import plan_batches
from pytest_ftgate.backends.torch_decode import CUDA_GRAPHS_ENV as CUDA_GRAPHS_ENV
from pytest_ftgate.backends.torch_graphs import StaticDecoder as _StaticDecoder  # noqa: F401  (tests patch it)
from pytest_ftgate.backends.torch_graphs import cache_arg as _cache_arg
from pytest_ftgate.backends.torch_graphs import kv_bytes as _kv_bytes
from pytest_ftgate.backends.torch_graphs import merge_prefills as _merge_prefills
from pytest_ftgate.backends.torch_graphs import row_bytes as _row_bytes
from pytest_ftgate.errors import BackendError, ModelError, NonFiniteError
from pytest_ftgate.fingerprint import model_fingerprint
from pytest_ftgate.options import looks_local

# Batch sizing without --ftgate-batch-size: on a GPU, the share of free memory the batch may use
# (KV cache and prefill activations, estimated by _row_bytes) and a ceiling on rows; on a CPU, a
# token budget per forward pass (a cap on prefill memory: decode steps on a CPU gain from big batches).
GPU_MEMORY_SHARE = 0.7
GROUP_MEMORY_SHARE = 0.45  # decode batches of several prefill batches: their KV caches together
PREFILL_SHARE = 0.3  # and each prefill batch beside them
GPU_MAX_ROWS = 1024
CPU_TOKENS_PER_BATCH = 16384
CPU_MAX_ROWS = 16  # a CPU step is compute-bound well before; fewer rows, batches of like lengths
MAX_PLAUSIBLE_CONTEXT = 1 << 30  # a tokenizer's model_max_length above this means unknown
CONTINUATIONS_PER_PASS = 4  # longer answer forms scored together, each on its own repeat of the batch's cache


@dataclass
class _Loaded:
    """One loaded base: the transformers model, its tokenizer, and the peft wrapper once adapted."""

    model: Any = field(repr=False)
    tokenizer: Any = field(repr=False)
    path: str
    device: str
    dtype: str
    # PeftModel around ``model`` once an adapter is added (the LoRA layers are injected in place)
    peft: Any = field(default=None, repr=False)
    adapters: dict[str, str] = field(default_factory=dict)  # adapter fingerprint -> peft adapter name
    fold_system: bool = False  # the chat template rejects the system role
    static_failed: bool = False  # static-cache decoding failed once: dynamic from then on


class TransformersBackend(LocalBackend):
    """Backend over transformers + peft. One instance keeps each base loaded once."""

    name = "transformers"
    capabilities = Capabilities(
        logprob=True, stop_rules=True, effect_check=True, context=True, describe=False, prefix_reuse=True,
        progress=True, joint=True,
    )  # fmt: skip

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._bases: dict[str, _Loaded] = {}
        threads.configure_environment()  # before torch loads libgomp (it reads the wait policy once)

    def version(self) -> str:
        return package_versions("torch", "transformers", "peft")

    # -- loading -----------------------------------------------------------------------------

    def load(self, model: str) -> Model:
        local = Path(model).expanduser()
        allow_pickle = os.environ.get(ALLOW_PICKLE_ENV) == "1"
        if local.exists():
            if not local.is_dir():
                raise ModelError(f"{local} is a file: point --ftgate-base at the model folder that holds it")
            if not (local / "config.json").is_file():
                raise ModelError(f"{local} has no config.json: point --ftgate-base at a model folder")
            check_weights(local, allow_pickle)
        elif looks_local(model):
            raise ModelError(
                f"model folder {model} does not exist: check --ftgate-base "
                "(a local folder, or a hub id such as google/gemma-4-e4b-it)"
            )
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        threads.size_torch(torch)
        source = str(local) if local.exists() else model
        device = self.options.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
        dtype_name = str(dtype).removeprefix("torch.")
        try:
            with no_progress_bars():
                tokenizer = AutoTokenizer.from_pretrained(source, padding_side="left")
                hf_model = AutoModelForCausalLM.from_pretrained(
                    source,
                    dtype=dtype,
                    use_safetensors=None if allow_pickle else True,
                    # transformers >= 5.1x swaps layers for kernels fetched from the hub on CUDA by
                    # default: code from the hub (ftgate never runs a model's own code), and a
                    # load that fails offline
                    use_kernels=False,
                    **({"device_map": device} if device != "cpu" else {}),
                )
        except Exception as exc:  # transformers raises many kinds; the user needs one sentence
            raise ModelError(load_failure(model, exc, allow_pickle)) from None
        hf_model.eval()
        prepare_tokenizer(tokenizer, model, "use an instruct model, or add a chat_template.jinja to the model folder")
        path = str(local.resolve()) if local.exists() else snapshot_path(model)
        loaded = _Loaded(hf_model, tokenizer, path, str(device), dtype_name)
        self._bases[f"{path}#{len(self._bases)}"] = loaded
        fingerprint = model_fingerprint(
            Path(path), extra={"backend": self.name, "version": self.version(), "dtype": dtype_name}
        )
        return Model(label=model, fingerprint=fingerprint, backend=self, handle=loaded)

    # -- adapters (the steps of LocalBackend.with_adapter; the peft surgery is peft_adapters.py) --

    def has_adapter(self, handle: _Loaded, fingerprint: str) -> bool:
        return fingerprint in handle.adapters

    def prepare_adapter(self, handle: _Loaded, info: AdapterInfo) -> peft_adapters.Prepared:
        return peft_adapters.prepare(handle, info)

    def attach_adapter(self, handle: _Loaded, fingerprint: str, prepared: peft_adapters.Prepared) -> None:
        peft_adapters.inject(handle, fingerprint, prepared)

    def detach_adapter(self, handle: _Loaded, fingerprint: str) -> None:
        peft_adapters.remove(handle, fingerprint)

    def _active(self, model: Model) -> contextlib.AbstractContextManager[_Loaded]:
        return peft_adapters.active(model)

    # -- inference ---------------------------------------------------------------------------

    def _prompt(self, loaded: _Loaded, messages: Sequence[Message]) -> str:
        """The chat template's text for ``messages`` (``local.chat_prompt``: the system text folded
        into the first user turn if the template rejects the system role)."""

        def render(chat: list[Message]) -> str:
            return str(loaded.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False))

        text, loaded.fold_system = chat_prompt(render, messages, loaded.fold_system, loaded.path)
        return text

    def _encode(self, loaded: _Loaded, texts: Sequence[str]) -> Any:
        # The chat template already writes every special token (bos included): add none.
        return loaded.tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=False).to(
            loaded.model.device
        )

    def effect_logits(self, model: Model) -> Any:
        """Logits (float32, CPU) of every position of ``EFFECT_PROMPT`` (the effect check)."""
        import torch

        with self._active(model) as loaded, torch.inference_mode():
            batch = self._encode(loaded, [self._prompt(loaded, EFFECT_PROMPT)])
            output = loaded.model(**batch)
            return output.logits.float().cpu()

    def context_length(self, model: Model) -> int | None:
        """The longest sequence the model takes: ``max_position_embeddings`` of its (text) config,
        else the tokenizer's ``model_max_length`` when that is a real limit (transformers writes
        ~1e30 there when the tokenizer does not know); None when neither says."""
        loaded: _Loaded = model.handle
        config = loaded.model.config
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        for value in (getattr(text, "max_position_embeddings", None), getattr(loaded.tokenizer, "model_max_length", None)):
            if isinstance(value, int) and 0 < value < MAX_PLAUSIBLE_CONTEXT:
                return value
        return None

    def prompt_ids(self, model: Model, messages: Sequence[Message]) -> list[int]:
        return self._ids(model.handle, self._prompt(model.handle, messages))

    @property
    def default_batch_size(self) -> int:
        """Examples the runner hands over per call (its unit of caching and progress); the backend
        splits them into batches that fit memory itself."""
        import torch

        return 1024 if torch.cuda.is_available() else 64

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
        """Greedy replies (``generate_sides`` with one side)."""
        return self.generate_sides(
            [model], prompts, max_tokens=max_tokens, batch_size=batch_size, stop=stop, progress=progress
        )[0]

    def generate_sides(
        self,
        models: Sequence[Model],
        prompts: Prompts,
        *,
        max_tokens: int,
        batch_size: int | None,
        stop: StopRule | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[list[str]]:
        """Each model's greedy replies to the same prompts, as ``generate`` gives them one model at
        a time. The prompts are cut into batches (``_batches``: groups that share a long prefix
        together, the rest sorted by length; sized to free memory unless ``batch_size`` is given),
        and each batch is prefilled once per model with that model's adapter on. A sequence
        leaves at its end-of-sequence token, at ``max_tokens``, or as soon as ``stop(reply so
        far)`` says its answer is decided.

        Where the static decoder runs (CUDA graphs; ``_groups``), prefilled batches are decoded
        together, as many as their KV caches fit, and a decode batch stays full: once half its
        rows have finished, the queue's next prompts join the running ones
        (``torch_decode.decode_stream``). When the models share one loaded base (base and
        adapters on it) rows of every model share each decode step, each row with its own
        model's adapter (``peft_adapters.per_row``). Models on different bases run one after the
        other. ``progress(done)`` hears as rows finish (prompts done, averaged over models)."""
        import torch

        loaded: _Loaded = models[0].handle
        if len(models) > 1 and (any(m.handle is not loaded for m in models) or not self._static_wanted(loaded, 2)):
            return [self.generate(m, prompts, max_tokens=max_tokens, batch_size=batch_size, stop=stop) for m in models]
        ids = [self._ids(loaded, self._prompt(loaded, messages)) for messages in prompts]
        run = torch_decode.Run(loaded, models, ids, max_tokens, torch_decode.eos_ids(loaded), stop, progress)
        streamed = batch_size is None and self._static_wanted(loaded, max_tokens)
        if streamed:
            run.budget = self._decode_budget(loaded)
        with torch.inference_mode():
            queue = self._groups(loaded, ids, len(models), max_tokens, batch_size, run.budget if streamed else None)
            cap = batch_size or len(ids)  # halved at each out-of-memory error, for the batches that follow
            while queue:
                group = queue.pop(0)
                if len(group) == 1 and len(group[0][1]) > cap:
                    side, chunk = group[0]
                    queue[:0] = [[(side, chunk[:cap])], [(side, chunk[cap:])]]
                    continue
                held = list(group)  # with the prompts a stream takes from the queue
                try:
                    self._decode_group(run, group, queue if streamed else None, held)
                except NonFiniteError as exc:
                    side = run.rows[exc.index][0] if exc.index is not None else 0
                    raise renamed_non_finite(models[side], exc, [index for _, index in run.rows]) from None
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    run.budget //= 2  # decode batches that refill hold half as much from now on
                    units = run.unfinished(held)
                    if not units:
                        continue
                    if len(units) > 1:  # the batches one by one
                        queue[:0] = [[unit] for unit in units]
                        continue
                    if sum(len(chunk) for _, chunk in held) == 1:  # a batch of one prompt did not fit
                        raise BackendError(
                            f"out of GPU memory generating one prompt with {models[0].label}: use a smaller model"
                        ) from None
                    cap = max(1, len(units[0][1]) // 2)
                    queue[:0] = [units]
                    continue
                run.report()
        return run.replies

    def _groups(
        self,
        loaded: _Loaded,
        ids: list[list[int]],
        sides: int,
        max_tokens: int,
        batch_size: int | None,
        budget: int | None = None,
    ) -> list[list[tuple[int, list[int]]]]:
        """Decode batches: lists of (model index, prompt indices) units, each unit one prefill
        batch. With a ``budget`` (bytes of KV cache: the static decoder runs, no ``batch_size``
        given), consecutive units share a decode batch while their rows fit ``_decode_rows``;
        prefill batches are then sized to ``PREFILL_SHARE`` of the free memory."""
        grouped = budget is not None
        units = [
            (side, chunk)
            for chunk in self._batches(loaded, ids, max_tokens, batch_size, share=PREFILL_SHARE if grouped else None)
            for side in range(sides)
        ]
        if budget is None:
            return [[unit] for unit in units]
        groups: list[list[tuple[int, list[int]]]] = []
        group: list[tuple[int, list[int]]] = []
        rows = width = 0
        for unit in units:
            length = max(len(ids[i]) for i in unit[1])
            if group and rows + len(unit[1]) > self._decode_rows(loaded, budget, max(width, length) + max_tokens):
                groups.append(group)
                group, rows, width = [], 0, 0
            group.append(unit)
            rows, width = rows + len(unit[1]), max(width, length)
        return groups + [group] if group else groups

    def _decode_budget(self, loaded: _Loaded) -> int:
        """Bytes the KV caches of one decode batch may take: ``GROUP_MEMORY_SHARE`` of the free GPU
        memory (on a CPU: ``CPU_TOKENS_PER_BATCH`` tokens' worth)."""
        if loaded.device.startswith("cuda"):
            import torch

            free, _ = torch.cuda.mem_get_info(torch.device(loaded.device))
            return int(free * GROUP_MEMORY_SHARE)
        return _kv_bytes(loaded.model, CPU_TOKENS_PER_BATCH)

    def _decode_rows(self, loaded: _Loaded, budget: int, slots: int) -> int:
        """Rows of ``slots`` KV slots each that fit ``budget`` (capped by the ``decode_rows`` option:
        tests)."""
        fit = budget // max(_kv_bytes(loaded.model, slots), 1)
        return min(fit, int(self.options.get("decode_rows") or fit))

    def _batches(
        self,
        loaded: _Loaded,
        ids: list[list[int]],
        extra: int,
        batch_size: int | None,
        copies: int = 1,
        share: float | None = None,
    ) -> list[list[int]]:
        """The prompts' indices cut into batches (``prefix.plan_batches``: groups sharing a long
        prefix together, the rest sorted by length), sized by ``batch_size``, the ``prefill_rows``
        option (tests), or to ``share`` of the free memory."""
        rows = self.options.get("prefill_rows")
        if rows:
            return plan_batches(ids, extra, lambda length: int(rows), batch_size)
        return plan_batches(ids, extra, lambda length: self.auto_batch_size(loaded, length, copies, share), batch_size)

    def auto_batch_size(self, loaded: _Loaded, length: int, copies: int = 1, share: float | None = None) -> int:
        """Rows per batch for sequences of up to ``length`` tokens: on a GPU, as many as the free
        memory holds (KV cache plus prefill activations, times ``copies`` when the cache is
        copied, with a safety margin); on a CPU, enough rows for ~16k tokens per forward pass,
        16 at most."""
        import torch

        if not loaded.device.startswith("cuda"):
            return max(1, min(CPU_MAX_ROWS, CPU_TOKENS_PER_BATCH // max(length, 1)))
        free, _ = torch.cuda.mem_get_info(torch.device(loaded.device))
        per_row = _row_bytes(loaded.model, length) * copies
        return max(1, min(GPU_MAX_ROWS, int(free * (share or GPU_MEMORY_SHARE)) // max(per_row, 1)))

    def _ids(self, loaded: _Loaded, text: str) -> list[int]:
        # The chat template already writes every special token (bos included): add none.
        return list(loaded.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _prefill(self, loaded: _Loaded, ids: list[list[int]], memo: dict[str, Any] | None = None) -> Any:
        """(last-position logits, mask, next positions, cache) of a batch (``torch_decode.prefill``)."""
        return torch_decode.prefill(loaded, ids, memo)

    def _decode_prefilled(
        self, loaded: _Loaded, prefilled: Any, max_tokens: int, eos: set[int], stop: StopRule | None
    ) -> list[list[int]] | None:
        forced = self.options.get("static_decode")
        return torch_decode.decode_prefilled(loaded, prefilled, max_tokens, eos, stop, forced)

    def _static_wanted(self, loaded: _Loaded, steps: int) -> bool:
        return torch_decode.static_wanted(loaded, steps, self.options.get("static_decode"))

    def _decode_group(
        self,
        run: torch_decode.Run,
        group: list[tuple[int, list[int]]],
        queue: list[list[tuple[int, list[int]]]] | None,
        held: list[tuple[int, list[int]]],
    ) -> None:
        """One decode batch (``_groups``), its rows' tokens into ``run``. Without a ``queue`` (no
        static decoder) one unit, the dynamic way. With one: each unit prefilled with its model's
        adapter on, the caches merged (``merge_prefills``) and decoded as a stream that takes
        more prompts from ``queue`` as rows finish (``torch_decode.QueueRefill``; what it takes is added to
        ``held``), each row with its model's adapter (``_scope``). If the static decoder fails,
        every unfinished row again, the dynamic way."""
        loaded, models = run.loaded, run.models
        labels = run.label(group)
        if queue is None:
            side, chunk = group[0]
            with self._active(models[side]):
                try:
                    tokens = self._decode(loaded, [run.ids[i] for i in chunk], run.max_tokens, run.eos, run.stop,
                                          run.memos[side])  # fmt: skip
                except NonFiniteError as exc:
                    raise NonFiniteError(str(exc), None if exc.index is None else labels[exc.index]) from None
            run.results.update(zip(labels, tokens, strict=True))
            return
        parts = []
        for side, chunk in group:
            with self._active(models[side]):
                parts.append(self._prefill(loaded, [run.ids[i] for i in chunk], run.memos[side]))
        refill = torch_decode.QueueRefill(self, run, queue, held)
        done = torch_decode.decode_stream(
            loaded, _merge_prefills(parts), labels, run.max_tokens, run.eos, run.stop, run.results,
            scope=self._scope(run), refill=refill, forced=self.options.get("static_decode"),
        )  # fmt: skip
        if done:
            return
        for side, left in run.unfinished(held):  # the static decoder failed: what is unfinished, the dynamic way
            for batch in self._batches(loaded, [run.ids[i] for i in left], run.max_tokens, None):
                self._decode_group(run, [(side, [left[k] for k in batch])], None, [])

    def _scope(self, run: torch_decode.Run) -> Callable[[list[int]], contextlib.AbstractContextManager[Any]]:
        """The context a decode batch of rows ``labels`` runs in: its model's adapter, or each
        row's (``peft_adapters.per_row``) when the rows belong to several models."""

        def scope(labels: list[int]) -> contextlib.AbstractContextManager[Any]:
            sides = {run.rows[label][0] for label in labels}
            if len(sides) == 1:
                return self._active(run.models[sides.pop()])
            return peft_adapters.per_row(run.loaded, [run.models[run.rows[label][0]].adapter for label in labels])

        return scope

    def _decode(
        self,
        loaded: _Loaded,
        ids: list[list[int]],
        max_tokens: int,
        eos: set[int],
        stop: StopRule | None,
        memo: dict[str, Any] | None = None,
    ) -> list[list[int]]:
        """Greedy decoding of one batch, with the adapter that is on; returns each row's new tokens
        (end-of-sequence excluded). A row whose logits are not finite raises NonFiniteError (its
        ``index`` is the row)."""
        out = self._decode_prefilled(loaded, self._prefill(loaded, ids, memo), max_tokens, eos, stop)
        if out is None:  # the static decoder failed before any step: this batch again, the dynamic way
            return self._decode(loaded, ids, max_tokens, eos, stop, memo)
        return out

    def score(
        self,
        model: Model,
        prompts: Prompts,
        continuations: Sequence[str],
        progress: Callable[[int], None] | None = None,
    ) -> list[list[float]]:
        """Log-probability of each continuation as the start of the reply to each prompt.

        One batched forward pass over the prompts (left padded) keeps only the last position's
        logits (``logits_to_keep=1``): that scores every single-token continuation. The longer
        continuations then run their remaining tokens together, up to ``CONTINUATIONS_PER_PASS``
        at a time, each batch row repeated once per continuation on a copy of the prompts' KV
        cache (one short pass), so no prompt is computed twice."""
        import torch

        loaded: _Loaded = model.handle
        pieces = [self._ids(loaded, str(c)) for c in continuations]
        if any(not piece for piece in pieces):
            raise BackendError(f"a continuation encodes to no tokens: {list(continuations)!r}")
        ids = [self._ids(loaded, self._prompt(loaded, messages)) for messages in prompts]
        longer = [j for j, piece in enumerate(pieces) if len(piece) > 1]
        extra = max((len(pieces[j]) for j in longer), default=1) - 1
        copies = 2 + min(len(longer), CONTINUATIONS_PER_PASS) if longer else 1
        batches = self._batches(loaded, ids, extra, None, copies=copies)
        rows: list[list[float]] = [[] for _ in ids]
        memo: dict[str, Any] = {}  # the last prefix pass (the system prompt's, shared by every batch)
        with self._active(model), torch.inference_mode():
            for chunk in batches:
                scores = self._score_batch(loaded, [ids[i] for i in chunk], pieces, longer, memo)
                for index, values in zip(chunk, scores, strict=True):
                    rows[index] = values
                if progress is not None:
                    progress(sum(1 for row in rows if row))
        return check_scores(model, rows)

    def _score_batch(
        self, loaded: _Loaded, ids: list[list[int]], pieces: list[list[int]], longer: list[int], memo: dict[str, Any]
    ) -> list[list[float]]:
        import torch

        logits, mask, position, cache = self._prefill(loaded, ids, memo)
        first = torch.log_softmax(logits[:, -1].float(), dim=-1)  # (B, vocab)
        firsts = torch.tensor([piece[0] for piece in pieces], device=first.device)
        totals = first[:, firsts]  # (B, continuations)
        rows = len(ids)
        for begin in range(0, len(longer), CONTINUATIONS_PER_PASS):
            group = longer[begin : begin + CONTINUATIONS_PER_PASS]
            k = len(group)
            tails = [pieces[j][1:] for j in group]
            steps = max(len(t) for t in tails)
            # row r, continuation c -> expanded row r * k + c; inputs right padded to ``steps``
            # (a padded position comes after every position that is read: causal, it changes none)
            inputs = [pieces[j][:-1] + [pieces[j][-1]] * (steps - len(t)) for j, t in zip(group, tails, strict=True)]
            expanded = copy.deepcopy(cache)
            expanded.batch_repeat_interleave(k)
            output = loaded.model(
                input_ids=torch.tensor(inputs * rows, device=mask.device),
                attention_mask=torch.cat([mask.repeat_interleave(k, 0), mask.new_ones((rows * k, steps))], dim=1),
                position_ids=position.repeat_interleave(k, 0) + torch.arange(steps, device=mask.device),
                **_cache_arg(loaded.model, expanded),
                use_cache=True,
                logits_to_keep=steps,
            )
            del expanded
            logprobs = torch.log_softmax(output.logits[:, -steps:].float(), dim=-1).view(rows, k, steps, -1)
            for c, (j, tail) in enumerate(zip(group, tails, strict=True)):
                n = len(tail)
                picked = logprobs[:, c, torch.arange(n), torch.tensor(tail, device=logprobs.device)]
                totals[:, j] += picked.sum(-1)
        return [[float(v) for v in row] for row in totals.cpu().tolist()]

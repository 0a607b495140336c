"""The ``llamacpp`` backend: GGUF models (any quantization) and LoRA GGUF adapters through llama-cpp-python.

Models: a ``.gguf`` file, or a folder that holds exactly one. The file is checked before llama.cpp
sees it (``GGUF`` magic, a readable header, ``general.type`` not ``adapter``), so a wrong path gets
an error that names the file and the fix instead of a crash in C. The model loads with
``llama_cpp.Llama(path, n_ctx=min(trained context, 8192), logits_all=False, seed=0,
n_threads=default_threads())`` (half the usable CPUs, split between xdist workers: see there).

Chat prompts: the chat template stored in the GGUF (``tokenizer.chat_template``), rendered with
llama-cpp-python's own Jinja formatter (``Jinja2ChatFormatter``, the one ``create_chat_completion``
uses for GGUF templates) with ``add_generation_prompt=True``. The text is tokenized with special
tokens parsed; a BOS token is put first when the GGUF asks for one (``add_bos_token``) and the
template did not write it, as llama.cpp's server does. A template that rejects the system role gets
the system text folded into the first user message (``system + "\\n\\n" + user``).

Generation is greedy, by ftgate's own loop over ``Llama.eval`` and the last position's logits
(argmax; the same tokens as ``create_chat_completion(temperature=0)``), one prompt at a time. The KV
cache keeps the previous prompt: a prompt that starts with the same tokens (every prompt of a
benchmark shares its system message) only evaluates the rest. A reply ends at an end-of-generation
token (``llama_vocab_is_eog``: ``<|im_end|>``, ``<|eot_id|>`` ...), at ``max_tokens``, or when the
benchmark's stop rule says its answer is decided. The reply is the detokenized new tokens, special
tokens left out.

Adapters: a LoRA GGUF (llama.cpp's ``convert_lora_to_gguf.py``) is loaded with
``llama_adapter_lora_init`` onto the already loaded base and switched on and off per call with
``llama_set_adapters_lora``, so base and tuned share one copy of the weights and one context (the
KV cache is dropped at every switch). llama.cpp applies the adapter's own ``adapter.lora.alpha``
(scale 1.0 here). An adapter for another base (other architecture, unknown tensor, wrong shape) is
refused with llama.cpp's own reason; one that leaves the logits of a probe prompt unchanged is an
``AdapterError``, as in the other backends.

``score`` (``logprob`` mode): one evaluation of each prompt (sharing the cached prefix), the log
softmax of the last position scores every single-token continuation; a longer continuation adds
one extra decode of its tokens (logits for every position), after which the cache is rolled back
to the prompt.

Nothing in this module imports llama_cpp at import time: ``import pytest_ftgate`` stays light.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_ftgate.adapters import AdapterInfo, inspect_adapter
from pytest_ftgate.backends import Message, Model, Prompts, StopRule, check_scores, non_finite, package_versions
from pytest_ftgate.backends.gguf import GGUFHeader, captured_log, find_gguf, log_reason, read_gguf_header
from pytest_ftgate.backends.gguf import quantize_gguf  # noqa: F401  (re-exported: its home before)
from pytest_ftgate.backends.local import EFFECT_PROMPT, LocalBackend, chat_prompt, decode_step
from pytest_ftgate.errors import AdapterError, BackendError, ModelError, NonFiniteError
from pytest_ftgate.fingerprint import _memo_hash, digest
from pytest_ftgate.threads import process_share

# Context size when the model was trained for more (Llama 3.1: 131072 would cost GBs of KV cache).
MAX_CONTEXT = 8192
DISTRIBUTION = "llama-cpp-python"
THREADS_ENV = "FTGATE_LLAMACPP_THREADS"
INSTALL_HINT = "pip install 'pytest-ftgate[llamacpp]' (llama-cpp-python builds from source: ~10 minutes)"


# -- the backend --------------------------------------------------------------------------------


_OPEN: weakref.WeakSet[Any] = weakref.WeakSet()


@atexit.register
def _close_open_models() -> None:
    """Free llama.cpp models while the interpreter still works: ``Llama.__del__`` at interpreter
    teardown prints "TypeError: 'NoneType' object is not callable" tracebacks."""
    for llm in list(_OPEN):
        with contextlib.suppress(Exception):
            llm.close()


def default_threads() -> int:
    """Threads per model: half the usable CPUs (llama.cpp's own default counts physical cores),
    shared out between pytest-xdist workers. More threads than free cores is far worse than fewer:
    llama.cpp's workers spin at every barrier, and on 2 busy cores SmolLM2 took 10-18 s for three
    prompts with 2 threads against 1.6 s with 1. Override with ``n_threads`` or
    ``FTGATE_LLAMACPP_THREADS``."""
    return max(1, process_share() // 2)


@dataclass
class _Adapter:
    pointer: Any = field(repr=False)
    path: Path
    scale: float = 1.0


@dataclass
class _Loaded:
    """One loaded GGUF model: its llama-cpp-python ``Llama``, header and LoRA adapters."""

    llm: Any = field(repr=False)
    path: Path
    header: GGUFHeader = field(repr=False)
    n_ctx: int
    adapters: dict[str, _Adapter] = field(default_factory=dict)  # adapter fingerprint -> adapter
    active: str | None = None  # fingerprint of the adapter now set on the context
    cached: list[int] = field(default_factory=list)  # tokens whose keys and values the KV cache holds
    fold_system: bool = False  # the chat template rejects the system role
    eog: dict[int, bool] = field(default_factory=dict)
    formatter: Any = field(default=None, repr=False)


class LlamaCppBackend(LocalBackend):
    """Backend over llama-cpp-python. One instance keeps each GGUF loaded once per ``load`` call.

    Options: ``n_ctx`` (context size; default the trained one, at most 8192) and ``n_threads``
    (default ``FTGATE_LLAMACPP_THREADS``, else ``default_threads()``)."""

    name = "llamacpp"
    fix_hint = "the right adapter was converted"

    def version(self) -> str:
        return package_versions(DISTRIBUTION)

    @property
    def default_batch_size(self) -> int:
        """Examples the runner hands over per call (its unit of caching and progress)."""
        return 32

    # -- loading -----------------------------------------------------------------------------

    def _model_header(self, model: str) -> GGUFHeader:
        path = find_gguf(model)
        header = read_gguf_header(path)
        if header.kind == "adapter":
            raise ModelError(
                f"{path} is a LoRA adapter GGUF, not a model: pass it with --ftgate-adapter and the model it was "
                "made for with --ftgate-base"
            )
        return header

    def describe(self, model: str) -> dict[str, str]:
        """Fingerprint parts of a GGUF model (the file hashed once, nothing loaded). The file holds
        the weights, tokenizer and chat template together; the template is also hashed on its own
        so a stale baseline can say that it changed."""
        header = self._model_header(model)
        return {
            "weights": _memo_hash(header.path),
            "chat_template": digest(header.chat_template or ""),
            "backend": f"{self.name} {self.version()}",
        }

    def load(self, model: str) -> Model:
        header = self._model_header(model)
        if header.chat_template is None:
            raise ModelError(
                f"{header.path} has no chat template (tokenizer.chat_template): ftgate sends chat prompts; use an "
                "instruct model's GGUF, or convert the model again from a folder that has its chat template"
            )
        import llama_cpp

        trained = header.context_length or MAX_CONTEXT
        n_ctx = int(self.options.get("n_ctx") or min(trained, MAX_CONTEXT))
        threads = self.options.get("n_threads") or os.environ.get(THREADS_ENV) or default_threads()
        with captured_log() as log:
            try:
                llm = llama_cpp.Llama(
                    model_path=str(header.path),
                    n_ctx=n_ctx,
                    n_batch=512,
                    logits_all=False,
                    verbose=False,
                    seed=0,
                    n_threads=int(threads),
                    n_threads_batch=int(threads),
                )
            except Exception as exc:  # llama.cpp reports through its log and a ValueError
                reason = log_reason(log, f"{type(exc).__name__}: {exc}")
                raise ModelError(
                    f"llama.cpp could not load {header.path}: {reason}. The file may be truncated, or made by a newer "
                    f"llama.cpp than {self.version()} supports (architecture {header.architecture!r}): upgrade "
                    "llama-cpp-python or convert the model again"
                ) from None
        _OPEN.add(llm)
        loaded = _Loaded(llm, header.path, header, n_ctx)
        loaded.formatter = _formatter(llm, header.chat_template)
        return Model(label=model, fingerprint=digest(self.describe(model)), backend=self, handle=loaded)

    # -- adapters (the steps of LocalBackend.with_adapter) -------------------------------------

    def read_adapter(self, adapter: str) -> AdapterInfo:
        """A LoRA GGUF, checked before llama.cpp sees it (NaN or infinite tensors are refused too)."""
        path = find_gguf(adapter, role="adapter", option="--ftgate-adapter")
        header = read_gguf_header(path, role="adapter", option="--ftgate-adapter")
        if header.kind != "adapter" or header.metadata.get("adapter.type", "lora") != "lora":
            raise AdapterError(
                f"{path} is not a LoRA adapter GGUF (general.type={header.kind!r}, "
                f"adapter.type={header.metadata.get('adapter.type')!r}): convert the peft adapter with llama.cpp's "
                "convert_lora_to_gguf.py, or pass a whole model with --ftgate-candidate"
            )
        return inspect_adapter(path)

    def adapter_place(self, info: AdapterInfo) -> Path:
        return info.weights

    def has_adapter(self, handle: _Loaded, fingerprint: str) -> bool:
        return fingerprint in handle.adapters

    def prepare_adapter(self, handle: _Loaded, info: AdapterInfo) -> _Adapter:
        """The adapter loaded by llama.cpp (``llama_adapter_lora_init``), not yet set on the context."""
        import llama_cpp

        path = info.weights
        header = read_gguf_header(path, role="adapter", option="--ftgate-adapter")
        if header.architecture != handle.header.architecture:
            raise AdapterError(
                f"{path} is a LoRA adapter for a {header.architecture!r} model, but the base {handle.path} is "
                f"{handle.header.architecture!r}: the adapter was trained for another base model; pass that base "
                "with --ftgate-base"
            )
        with captured_log() as log:
            pointer = llama_cpp.llama_adapter_lora_init(handle.llm.model, str(path).encode("utf-8"))
        if not pointer:
            reason = log_reason(log, "llama.cpp gave no reason")
            raise AdapterError(
                f"{path} does not fit base model {handle.path}: {reason}. The adapter was trained for another "
                "base model: pass that base with --ftgate-base"
            )
        return _Adapter(pointer, path)

    def attach_adapter(self, handle: _Loaded, fingerprint: str, prepared: _Adapter) -> None:
        handle.adapters[fingerprint] = prepared

    def detach_adapter(self, handle: _Loaded, fingerprint: str) -> None:
        self._remove(handle, fingerprint)

    def _remove(self, loaded: _Loaded, fp: str) -> None:
        import llama_cpp

        entry = loaded.adapters.pop(fp, None)
        if entry is None:
            return
        if loaded.active == fp:
            self._activate(loaded, None)
        llama_cpp.llama_adapter_lora_free(entry.pointer)

    def _activate(self, loaded: _Loaded, adapter: str | None) -> None:
        """Set ``adapter`` (or none) on the context. The KV cache was computed with the previous
        setting, so it is dropped."""
        if loaded.active == adapter:
            return
        import llama_cpp

        if adapter is None:
            llama_cpp.llama_set_adapters_lora(loaded.llm.ctx, None, 0, None)
        else:
            entry = loaded.adapters.get(adapter)
            if entry is None:
                raise BackendError(f"adapter {adapter[:12]} is no longer loaded on {loaded.path}: load the base again")
            pointers = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(entry.pointer)
            scales = (ctypes.c_float * 1)(entry.scale)
            llama_cpp.llama_set_adapters_lora(loaded.llm.ctx, pointers, 1, scales)
        loaded.active = adapter
        self._forget(loaded)

    @staticmethod
    def _forget(loaded: _Loaded) -> None:
        loaded.cached = []
        loaded.llm.n_tokens = 0

    # -- prompts and evaluation ----------------------------------------------------------------

    def _prompt(self, loaded: _Loaded, messages: Sequence[Message]) -> str:
        def render(chat: list[Message]) -> str:
            return str(loaded.formatter(messages=chat).prompt)

        text, loaded.fold_system = chat_prompt(render, messages, loaded.fold_system, loaded.path)
        return text

    def _ids(self, loaded: _Loaded, messages: Sequence[Message]) -> list[int]:
        import llama_cpp

        llm = loaded.llm
        ids = list(llm.tokenize(self._prompt(loaded, messages).encode("utf-8"), add_bos=False, special=True))
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        bos = llm.token_bos()
        if llama_cpp.llama_vocab_get_add_bos(vocab) and bos >= 0 and (not ids or ids[0] != bos):
            ids.insert(0, bos)
        if not ids:
            raise BackendError(f"the chat template of {loaded.path} rendered an empty prompt")
        return ids

    def context_length(self, model: Model) -> int | None:
        """The context this model was created with (``n_ctx``)."""
        return model.handle.n_ctx  # type: ignore[no-any-return]

    def prompt_ids(self, model: Model, messages: Sequence[Message]) -> list[int]:
        """The prompt's tokens, chat template and BOS included (what ``generate`` feeds)."""
        return self._ids(model.handle, messages)

    def _check_room(self, loaded: _Loaded, length: int, extra: int) -> None:
        if length + extra > loaded.n_ctx:
            raise BackendError(
                f"a prompt of {length} tokens plus {extra} new tokens does not fit the context of {loaded.n_ctx} "
                f"tokens of {loaded.path.name}: create the backend with a larger n_ctx "
                f"(the model was trained for {loaded.header.context_length})"
            )

    def _last_logits(self, loaded: _Loaded) -> Any:
        import llama_cpp
        import numpy as np

        pointer = llama_cpp.llama_get_logits_ith(loaded.llm.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(loaded.llm.n_vocab(),)).astype(np.float32, copy=True)

    def _feed(self, loaded: _Loaded, ids: list[int]) -> Any:
        """Evaluate a prompt, reusing the cached tokens it starts with; the last position's logits."""
        cached = loaded.cached
        common = 0
        limit = min(len(cached), len(ids) - 1)  # at least one token is evaluated: its logits are needed
        while common < limit and cached[common] == ids[common]:
            common += 1
        llm = loaded.llm
        llm.n_tokens = common  # eval drops the cache from here on
        loaded.cached = list(ids[:common])
        self._eval(loaded, ids[common:])
        return self._last_logits(loaded)

    def _eval(self, loaded: _Loaded, tokens: Sequence[int]) -> None:
        try:
            loaded.llm.eval(list(tokens))
        except Exception as exc:
            self._forget(loaded)
            raise BackendError(
                f"llama.cpp failed to evaluate {len(tokens)} tokens: {type(exc).__name__}: {exc}"
            ) from None
        loaded.cached.extend(tokens)

    def _eval_all(self, loaded: _Loaded, tokens: Sequence[int]) -> Any:
        """Evaluate ``tokens`` after the cached ones and return the logits of every position
        (``len(tokens)`` x vocabulary), without ``logits_all`` on the whole context."""
        import numpy as np

        llm = loaded.llm
        rows = []
        for start in range(0, len(tokens), llm.n_batch):
            part = list(tokens[start : start + llm.n_batch])
            n_past = len(loaded.cached)
            llm._ctx.kv_cache_seq_rm(-1, n_past, -1)
            llm._batch.set_batch(batch=part, n_past=n_past, logits_all=True)
            try:
                llm._ctx.decode(llm._batch)
            except Exception as exc:
                self._forget(loaded)
                raise BackendError(
                    f"llama.cpp failed to evaluate {len(part)} tokens: {type(exc).__name__}: {exc}"
                ) from None
            logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(len(part) * llm.n_vocab(),))
            rows.append(logits.reshape(len(part), llm.n_vocab()).astype(np.float32, copy=True))
            llm.input_ids[n_past : n_past + len(part)] = part
            llm.n_tokens = n_past + len(part)
            loaded.cached.extend(part)
        return np.concatenate(rows, axis=0)

    def _rollback(self, loaded: _Loaded, length: int) -> None:
        """Forget the cached tokens after the first ``length`` (the next eval drops their cache)."""
        del loaded.cached[length:]
        loaded.llm.n_tokens = length

    def _is_eog(self, loaded: _Loaded, token: int) -> bool:
        if token not in loaded.eog:
            import llama_cpp

            vocab = llama_cpp.llama_model_get_vocab(loaded.llm.model)
            loaded.eog[token] = bool(llama_cpp.llama_vocab_is_eog(vocab, token))
        return loaded.eog[token]

    def _text(self, loaded: _Loaded, tokens: list[int]) -> str:
        return bytes(loaded.llm.detokenize(tokens)).decode("utf-8", errors="ignore")

    # -- inference -------------------------------------------------------------------------------

    def effect_logits(self, model: Model) -> Any:
        """Logits (float32, positions x vocabulary) of ``EFFECT_PROMPT`` (the effect check)."""
        loaded: _Loaded = model.handle
        self._activate(loaded, model.adapter)
        ids = self._ids(loaded, EFFECT_PROMPT)
        self._forget(loaded)
        return self._eval_all(loaded, ids)

    def generate(
        self, model: Model, prompts: Prompts, *, max_tokens: int, batch_size: int | None, stop: StopRule | None = None
    ) -> list[str]:
        """Greedy replies, one prompt at a time (``batch_size`` only sizes the runner's chunks:
        llama-cpp-python runs one sequence per context). Prompts are taken in sorted token order so
        that each shares as long a prefix as possible with the one before (KV cache reuse)."""
        import numpy as np

        loaded: _Loaded = model.handle
        self._activate(loaded, model.adapter)
        ids = [self._ids(loaded, messages) for messages in prompts]
        replies = [""] * len(ids)
        for index in sorted(range(len(ids)), key=lambda i: ids[i]):
            self._check_room(loaded, len(ids[index]), max_tokens)
            logits = self._feed(loaded, ids[index])
            out: list[list[int]] = [[]]
            while True:
                token = int(np.argmax(logits))  # NaN counts as the largest: a broken row picks it
                try:
                    running = decode_step(
                        [token if np.isfinite(logits[token]) else -1], [0], out,
                        eos=lambda t: self._is_eog(loaded, t), max_tokens=max_tokens, stop=stop,
                        texts=lambda rows: [self._text(loaded, row) for row in rows],
                    )  # fmt: skip
                except NonFiniteError:
                    raise non_finite(model, "logits", index) from None
                if not running:
                    break
                self._eval(loaded, [token])
                logits = self._last_logits(loaded)
            replies[index] = self._text(loaded, out[0])
        return replies

    def score(
        self, model: Model, prompts: Prompts, continuations: Sequence[str]
    ) -> list[list[float]]:
        """Log-probability of each continuation as the start of the reply to each prompt: one
        evaluation per prompt for every single-token continuation, one extra decode per longer one."""
        loaded: _Loaded = model.handle
        self._activate(loaded, model.adapter)
        llm = loaded.llm
        pieces = [list(llm.tokenize(str(c).encode("utf-8"), add_bos=False, special=False)) for c in continuations]
        if any(not piece for piece in pieces):
            raise BackendError(f"a continuation encodes to no tokens: {list(continuations)!r}")
        ids = [self._ids(loaded, messages) for messages in prompts]
        extra = max(len(piece) for piece in pieces)
        rows: list[list[float]] = [[] for _ in ids]
        for index in sorted(range(len(ids)), key=lambda i: ids[i]):
            prompt = ids[index]
            self._check_room(loaded, len(prompt), extra)
            first = _log_softmax(self._feed(loaded, prompt))
            values = []
            for piece in pieces:
                total = float(first[piece[0]])
                if len(piece) > 1:
                    steps = _log_softmax(self._eval_all(loaded, piece[:-1]))
                    total += float(sum(steps[k, token] for k, token in enumerate(piece[1:])))
                    self._rollback(loaded, len(prompt))
                values.append(total)
            rows[index] = values
        return check_scores(model, rows)


def _formatter(llm: Any, template: str) -> Any:
    """llama-cpp-python's Jinja formatter for the GGUF's chat template (as create_chat_completion builds it)."""
    from llama_cpp import llama_chat_format

    def token_text(token: int) -> str:
        return llm._model.token_get_text(token) if token != -1 else ""

    return llama_chat_format.Jinja2ChatFormatter(
        template=template,
        eos_token=token_text(llm.token_eos()),
        bos_token=token_text(llm.token_bos()),
        add_generation_prompt=True,
        stop_token_ids=[llm.token_eos()],
    )


def _log_softmax(logits: Any) -> Any:
    import numpy as np

    values = np.asarray(logits, dtype=np.float64)
    top = values.max(axis=-1, keepdims=True)
    return values - top - np.log(np.exp(values - top).sum(axis=-1, keepdims=True))

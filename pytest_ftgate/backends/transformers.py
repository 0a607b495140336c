"""The ``transformers`` backend: any causal LM through transformers + torch, adapters through peft.

Loading: ``AutoTokenizer`` (left padding, a pad token set if missing) and
``AutoModelForCausalLM.from_pretrained(path, dtype=...)``: bfloat16 on CUDA, float32 on CPU,
safetensors only (pickle weights are refused unless ``FTGATE_ALLOW_PICKLE=1``),
``trust_remote_code`` never set. Gemma 4 multimodal checkpoints come back as
``Gemma4ForConditionalGeneration``; only their text path is used.

Adapters are injected with peft on the already loaded base, so base and tuned share one copy of
the weights: the tuned ``Model`` runs with its adapter active, the base ``Model`` runs inside
``PeftModel.disable_adapter()``. peft adapters load as ``PeftModel.from_pretrained`` would
(its config, ``set_peft_model_state_dict``), except that the injected modules are exactly the
ones the weights file names (plain ``target_modules`` such as ``q_proj`` also hit the vision
tower's ``Gemma4ClippableLinear``, which peft cannot wrap). mlx-tune / mlx-vlm adapters are
converted to peft: ``lora_a`` (in x r) -> ``lora_A.weight`` (r x in), ``lora_b`` -> ``lora_B.weight``,
``language_model.model.layers.N...`` -> ``model.language_model.layers.N...``, and
``lora_alpha = scale * r`` with the adapter's effective scale (``AdapterInfo.scale``), so the
tuned model is the one that was trained.

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
(``FTGATE_CUDA_GRAPHS=0``: the dynamic loop, whose finished rows are dropped). Only the new tokens
are decoded (``skip_special_tokens=True``). ``score`` (``logprob`` mode) is one batched forward
pass with ``logits_to_keep=1`` for single-token answers, plus one shared-cache pass per four
longer ones.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from pytest_ftgate import threads
from pytest_ftgate.adapters import AdapterInfo, inspect_adapter
from pytest_ftgate.backends import PROBE, Message, Model, attach_adapter, check_scores, non_finite, package_versions
from pytest_ftgate.backends.hf_files import ALLOW_PICKLE_ENV, check_weights, load_failure, no_progress_bars, snapshot_path
from pytest_ftgate.backends.prefix import PrefixPlan, plan_batches, prefix_plan
from pytest_ftgate.backends.torch_graphs import StaticDecoder as _StaticDecoder
from pytest_ftgate.backends.torch_graphs import cache_arg as _cache_arg
from pytest_ftgate.backends.torch_graphs import greedy as _greedy
from pytest_ftgate.backends.torch_graphs import plain_cache as _plain_cache
from pytest_ftgate.backends.torch_graphs import row_bytes as _row_bytes
from pytest_ftgate.errors import AdapterError, BackendError, ModelError, NonFiniteError
from pytest_ftgate.fingerprint import model_fingerprint
from pytest_ftgate.options import looks_local

CUDA_GRAPHS_ENV = "FTGATE_CUDA_GRAPHS"  # "0": decode with a dynamic cache on CUDA too
# Batch sizing without --ftgate-batch-size: on a GPU, the share of free memory the batch may use
# (KV cache and prefill activations, estimated by _row_bytes) and a ceiling on rows; on a CPU, a
# token budget per forward pass (a cap on prefill memory: decode steps on a CPU gain from big batches).
GPU_MEMORY_SHARE = 0.7
GPU_MAX_ROWS = 1024
CPU_TOKENS_PER_BATCH = 16384
CPU_MAX_ROWS = 16  # a CPU step is compute-bound well before; fewer rows, batches of like lengths
MAX_PLAUSIBLE_CONTEXT = 1 << 30  # a tokenizer's model_max_length above this means unknown
CONTINUATIONS_PER_PASS = 4  # longer answer forms scored together, each on its own repeat of the batch's cache
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.(?P<part>lora_A|lora_B)\.weight$")


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


class TransformersBackend:
    """Backend over transformers + peft. One instance keeps each base loaded once."""

    name = "transformers"

    def __init__(self, **options: Any) -> None:
        self.options = options
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
                    **({"device_map": device} if device != "cpu" else {}),
                )
        except Exception as exc:  # transformers raises many kinds; the user needs one sentence
            raise ModelError(load_failure(model, exc, allow_pickle)) from None
        hf_model.eval()
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
            if tokenizer.pad_token is None:
                raise ModelError(f"the tokenizer of {model} has no pad, eos or unk token: batched generation needs one")
        if not getattr(tokenizer, "chat_template", None):
            raise ModelError(
                f"the tokenizer of {model} has no chat template: ftgate sends chat prompts; use an instruct "
                "model, or add a chat_template.jinja to the model folder"
            )
        path = str(local.resolve()) if local.exists() else snapshot_path(model)
        loaded = _Loaded(hf_model, tokenizer, path, str(device), dtype_name)
        self._bases[f"{path}#{len(self._bases)}"] = loaded
        fingerprint = model_fingerprint(
            Path(path), extra={"backend": self.name, "version": self.version(), "dtype": dtype_name}
        )
        return Model(label=model, fingerprint=fingerprint, backend=self, handle=loaded)

    def with_adapter(self, base: Model, adapter: str) -> Model:
        info = inspect_adapter(adapter)
        loaded: _Loaded = base.handle
        fp = info.fingerprint()
        if fp not in loaded.adapters:
            config, state = self._read_adapter(info, loaded)
            self._inject(loaded, info, fp, config, state)
        remove = lambda: self._remove(loaded, fp)  # noqa: E731
        return attach_adapter(self, base, info.path.name, fp, info.path, remove, "the right folder was saved")

    def _read_adapter(self, info: AdapterInfo, loaded: _Loaded) -> tuple[Any, dict[str, Any]]:
        """The adapter as (LoraConfig, state dict in peft's saved naming and layout)."""
        from peft import LoraConfig
        from safetensors.torch import load_file

        try:
            raw = load_file(str(info.weights))
        except Exception as exc:
            raise AdapterError(f"{info.weights} could not be read ({exc}): re-save the adapter") from None
        if info.format == "peft":
            try:
                config = LoraConfig.from_pretrained(str(info.path))
            except Exception as exc:
                raise AdapterError(
                    f"{info.path / 'adapter_config.json'} is not a peft LoRA config peft {metadata.version('peft')} "
                    f"can read ({type(exc).__name__}: {exc}): re-save the adapter"
                ) from None
            return config, raw
        modules = {name for name, _ in loaded.model.named_modules()}
        state = {}
        for key, value in raw.items():
            stem, _, part = key.rpartition(".")
            if part not in ("lora_a", "lora_b"):
                state[key] = value  # reported as an unknown key by _check_fit
                continue
            hf = _hf_module(stem, modules)
            suffix = "lora_A.weight" if part == "lora_a" else "lora_B.weight"
            state[f"base_model.model.{hf}.{suffix}"] = value.T.contiguous()
        # mlx LoRA: y = W x + scale * (x @ lora_a) @ lora_b; peft: y = W x + (alpha / r) * B(A(x))
        config = LoraConfig(
            r=info.rank,
            lora_alpha=info.scale * info.rank,  # type: ignore[arg-type]  # peft divides it by r: floats work
            lora_dropout=0.0,
            bias="none",
            target_modules=[],
            inference_mode=True,
        )
        return config, state

    def _check_fit(self, loaded: _Loaded, info: AdapterInfo, config: Any, state: dict[str, Any]) -> list[str]:
        """Every LoRA tensor must land on a linear module of the base with the right shape.

        Returns the module names to inject; raises the "does not fit" AdapterError otherwise.
        Runs before the model is touched, so a refused adapter leaves the base as it was.
        """
        modules = dict(loaded.model.named_modules())
        unknown: list[str] = []
        mismatched: list[str] = []
        targets: set[str] = set()
        ranks = not getattr(config, "rank_pattern", None)
        for key, value in state.items():
            match = _LORA_KEY.match(key)
            if match is None:
                continue  # DoRA magnitudes, modules_to_save ...: peft's own load checks them
            name, part = match["module"], match["part"]
            module = modules.get(name)
            in_features = getattr(module, "in_features", None)
            out_features = getattr(module, "out_features", None)
            if module is None or in_features is None or out_features is None:
                unknown.append(key)
                continue
            shape = tuple(value.shape)
            rank = config.r if ranks else shape[0 if part == "lora_A" else 1]
            expected = (rank, in_features) if part == "lora_A" else (out_features, rank)
            if shape != expected:
                mismatched.append(f"{key}: adapter {shape} vs model {expected}")
            targets.add(name)
        if unknown or mismatched:
            _raise_misfit(info, loaded, unknown, mismatched)
        if not targets:
            raise AdapterError(f"{info.weights} holds no LoRA A/B tensors: re-save the adapter")
        return sorted(targets)

    def _inject(self, loaded: _Loaded, info: AdapterInfo, fp: str, config: Any, state: dict[str, Any]) -> None:
        """Add the adapter's LoRA layers to the loaded base (in place) and load its weights."""
        from peft import PeftModel, set_peft_model_state_dict

        targets = self._check_fit(loaded, info, config, state)
        config = copy.deepcopy(config)
        # Exactly the modules the weights name: no vision-tower wrappers, nothing left at init.
        config.target_modules = targets
        config.layers_to_transform = None
        config.layers_pattern = None
        config.exclude_modules = None
        config.inference_mode = True
        name = f"ftgate_{fp[:16]}"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # deprecation notes from inside peft / transformers
                if loaded.peft is None:
                    loaded.peft = PeftModel(loaded.model, config, adapter_name=name)
                else:
                    loaded.peft.add_adapter(name, config)
            loaded.adapters[fp] = name
            result: Any = set_peft_model_state_dict(loaded.peft, state, adapter_name=name)
        except Exception as exc:
            if fp in loaded.adapters:
                self._remove(loaded, fp)
            detail = "; ".join(line.strip() for line in str(exc).splitlines() if "size mismatch" in line)
            raise AdapterError(
                f"{info.weights} does not fit base model {loaded.path}: peft could not load it "
                f"({detail or f'{type(exc).__name__}: {exc}'}). "
                "The adapter was trained for another base model: pass that base with --ftgate-base"
            ) from None
        unexpected = list(result.unexpected_keys)
        if unexpected:
            self._remove(loaded, fp)
            _raise_misfit(info, loaded, unexpected, [])
        loaded.peft.eval()
        loaded.model.requires_grad_(False)

    def _remove(self, loaded: _Loaded, fp: str) -> None:
        """Take an adapter out again (refused adapters must not linger in the shared base)."""
        name = loaded.adapters.pop(fp, None)
        if loaded.peft is None or name is None:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "adapter X was active which is now deleted"
            if not loaded.adapters:
                loaded.peft.base_model.unload()  # back to the plain modules, in place
                loaded.peft = None
            else:
                loaded.peft.delete_adapter(name)

    @contextlib.contextmanager
    def _active(self, model: Model) -> Iterator[_Loaded]:
        """Run with ``model``'s adapter switched on, or with every adapter off for a base model."""
        loaded: _Loaded = model.handle
        if loaded.peft is None:
            if model.adapter is not None:
                raise BackendError(f"adapter of {model.label} is no longer loaded: load the base again")
            yield loaded
        elif model.adapter is None:
            with loaded.peft.disable_adapter():
                yield loaded
        else:
            name = loaded.adapters.get(model.adapter)
            if name is None:
                raise BackendError(f"adapter of {model.label} is no longer loaded: load the base again")
            if loaded.peft.active_adapter != name:
                loaded.peft.set_adapter(name, inference_mode=True)
            yield loaded

    # -- inference ---------------------------------------------------------------------------

    def _prompt(self, loaded: _Loaded, messages: Sequence[Message]) -> str:
        """The chat template's text for ``messages`` (system folded into the first user turn if
        the template rejects the system role)."""
        messages = [dict(m) for m in messages]
        if not loaded.fold_system:
            try:
                return str(loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
            except Exception as exc:
                first_error = exc
                if not any(m.get("role") == "system" for m in messages):
                    raise BackendError(
                        f"the chat template of {loaded.path} failed: {type(exc).__name__}: {exc}"
                    ) from None
            try:
                text = self._folded(loaded, messages)
            except Exception:
                raise BackendError(
                    f"the chat template of {loaded.path} failed: {type(first_error).__name__}: {first_error}"
                ) from None
            loaded.fold_system = True
            return text
        return self._folded(loaded, messages)

    @staticmethod
    def _folded(loaded: _Loaded, messages: list[dict[str, str]]) -> str:
        system = "\n\n".join(str(m["content"]) for m in messages if m.get("role") == "system")
        rest = [m for m in messages if m.get("role") != "system"]
        for message in rest:
            if message.get("role") == "user" and system:
                message["content"] = f"{system}\n\n{message['content']}"
                break
        return str(loaded.tokenizer.apply_chat_template(rest, add_generation_prompt=True, tokenize=False))

    def _encode(self, loaded: _Loaded, texts: Sequence[str]) -> Any:
        # The chat template already writes every special token (bos included): add none.
        return loaded.tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=False).to(
            loaded.model.device
        )

    def probe_logits(self, model: Model) -> Any:
        """Logits (float32, CPU) of every position of a fixed probe prompt (proves an adapter acts)."""
        import torch

        with self._active(model) as loaded, torch.inference_mode():
            batch = self._encode(loaded, [self._prompt(loaded, PROBE)])
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

    def count_tokens(self, model: Model, prompts: Sequence[Sequence[Message]]) -> list[int]:
        """Each prompt's length in tokens, chat template included (what ``generate`` feeds)."""
        loaded: _Loaded = model.handle
        return [len(self._ids(loaded, self._prompt(loaded, messages))) for messages in prompts]

    @property
    def default_batch_size(self) -> int:
        """Examples the runner hands over per call (its unit of caching and progress); the backend
        splits them into batches that fit memory itself."""
        import torch

        return 1024 if torch.cuda.is_available() else 64

    def generate(
        self,
        model: Model,
        prompts: Sequence[Sequence[Message]],
        *,
        max_tokens: int,
        batch_size: int | None,
        stop: Callable[[str], bool] | None = None,
    ) -> list[str]:
        """Greedy replies, batched with left padding (prompts sorted by length, so batches carry
        little padding), one KV cache per batch. A sequence leaves the batch at its end-of-sequence
        token, at ``max_tokens``, or as soon as ``stop(reply so far)`` says its answer is decided;
        the cache rows of finished sequences are dropped, so the rest run on a smaller batch.
        Without ``batch_size`` the batch is sized to the memory free for it (``auto_batch_size``)."""
        import torch

        loaded: _Loaded = model.handle
        ids = [self._ids(loaded, self._prompt(loaded, messages)) for messages in prompts]
        eos = _eos_ids(loaded)
        replies: list[str] = [""] * len(ids)
        memo: dict[str, Any] = {}  # the last prefix pass (the system prompt's, shared by every batch)
        with self._active(model), torch.inference_mode():
            queue = self._batches(loaded, ids, max_tokens, batch_size)
            cap = batch_size or len(ids)  # halved at each out-of-memory error, for the batches that follow
            while queue:
                chunk = queue.pop(0)
                if len(chunk) > cap:
                    queue[:0] = [chunk[:cap], chunk[cap:]]
                    continue
                try:
                    tokens = self._decode(loaded, [ids[i] for i in chunk], max_tokens, eos, stop, memo)
                except NonFiniteError as exc:
                    raise non_finite(model, "logits", None if exc.index is None else chunk[exc.index]) from None
                except torch.cuda.OutOfMemoryError:
                    if len(chunk) == 1:
                        raise BackendError(
                            f"out of GPU memory generating one prompt with {model.label}: use a smaller model"
                        ) from None
                    cap = max(1, len(chunk) // 2)
                    torch.cuda.empty_cache()
                    queue.insert(0, chunk)
                    continue
                for index, row in zip(chunk, tokens, strict=True):
                    replies[index] = loaded.tokenizer.decode(row, skip_special_tokens=True)
        return replies

    def _batches(
        self, loaded: _Loaded, ids: list[list[int]], extra: int, batch_size: int | None, copies: int = 1
    ) -> list[list[int]]:
        """The prompts' indices cut into batches (``prefix.plan_batches``: groups sharing a long
        prefix together, the rest sorted by length), sized by ``batch_size`` or to memory."""
        return plan_batches(ids, extra, lambda length: self.auto_batch_size(loaded, length, copies), batch_size)

    def auto_batch_size(self, loaded: _Loaded, length: int, copies: int = 1) -> int:
        """Rows per batch for sequences of up to ``length`` tokens: on a GPU, as many as the free
        memory holds (KV cache plus prefill activations, times ``copies`` when the cache is
        copied, with a safety margin); on a CPU, enough rows for ~16k tokens per forward pass,
        16 at most."""
        import torch

        if not loaded.device.startswith("cuda"):
            return max(1, min(CPU_MAX_ROWS, CPU_TOKENS_PER_BATCH // max(length, 1)))
        free, _ = torch.cuda.mem_get_info(torch.device(loaded.device))
        per_row = _row_bytes(loaded.model, length) * copies
        return max(1, min(GPU_MAX_ROWS, int(free * GPU_MEMORY_SHARE) // max(per_row, 1)))

    def _ids(self, loaded: _Loaded, text: str) -> list[int]:
        # The chat template already writes every special token (bos included): add none.
        return list(loaded.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _prefill(
        self, loaded: _Loaded, ids: list[list[int]], memo: dict[str, Any] | None = None
    ) -> tuple[Any, Any, Any, Any]:
        """The prompts through the model: (last-position logits, attention mask, next position
        ids, cache). The layout below is exact for sliding windows of any length.

        The batch is an ordinary left-padded one (padding masked, position ids counting real
        tokens only, as ``generate`` does), so every row computes what it computes alone. Token
        prefixes that rows share are computed once (``prefix.prefix_plan``): each group's head
        (its longest prompt) runs in a first, smaller pass, and the keys and values of what each
        row shares with its head are copied into the row's first cache slots; the model then runs
        only the remaining slots. With no long shared prefix the whole batch is one group (the
        system prompt and chat template shared). ``memo`` keeps the last prefix pass, so the
        batches of one call compute a prefix they share once."""
        import torch
        from transformers import DynamicCache

        device = loaded.model.device
        pad = loaded.tokenizer.pad_token_id
        lengths = [len(row) for row in ids]
        width = max(lengths)
        mask = torch.tensor([[0] * (width - n) + [1] * n for n in lengths], device=device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=loaded.model.config)
        plan = prefix_plan(ids) if _plain_cache(loaded.model, cache) else None
        start = 0
        if plan is not None:
            start = plan.start
            self._seed_cache(loaded, cache, plan, {} if memo is None else memo)
        input_ids = torch.tensor([[pad] * (width - len(row)) + row for row in ids], device=device)[:, start:]
        output = loaded.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions[:, start:],
            **_cache_arg(loaded.model, cache),
            use_cache=True,
            logits_to_keep=1,
        )
        return output.logits, mask, positions[:, -1:] + 1, cache

    def _seed_cache(self, loaded: _Loaded, cache: Any, plan: PrefixPlan, memo: dict[str, Any]) -> None:
        """Fill the first ``plan.start`` cache slots of every row from the prefix pass over the
        groups' prefixes (``_prefix_states``), or from ``memo``'s when it ran the same ones."""
        import torch

        device = loaded.model.device
        if memo.get("prefixes") != plan.prefixes:
            memo.update(prefixes=plan.prefixes, states=self._prefix_states(loaded, plan.prefixes))
        slots = torch.tensor(plan.slots, device=device)
        groups = torch.tensor(plan.owner, device=device)[:, None]
        for number, state in enumerate(memo["states"]):
            if state is not None:
                keys, values = (part.transpose(1, 2)[groups, slots].transpose(1, 2).contiguous() for part in state)
                cache.layers[number].update(keys, values)

    def _prefix_states(
        self, loaded: _Loaded, prefixes: list[list[int]], together: bool | None = None
    ) -> list[tuple[Any, Any] | None]:
        """Each layer's keys and values for ``prefixes``, left padded to the longest: (groups,
        heads, span, dim), every position kept (sliding-window layers too: rows take different
        spans); None for layers that hold none (KV-shared ones). On a GPU one left-padded pass;
        on a CPU one pass per prefix, unpadded (a CPU pass gains nothing from more rows, and
        long masked prompts take the slower attention path)."""
        import torch
        from transformers import DynamicCache

        device = loaded.model.device
        pad = loaded.tokenizer.pad_token_id
        span = max(len(p) for p in prefixes)
        together = loaded.device.startswith("cuda") if together is None else together
        passes = [prefixes] if together else [[p] for p in prefixes]
        per_pass = []
        for rows in passes:
            width = max(len(p) for p in rows)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in rows], device=device)
            states = DynamicCache()
            loaded.model(
                input_ids=torch.tensor([[pad] * (width - len(p)) + p for p in rows], device=device),
                attention_mask=mask if together else None,  # one unpadded row: plain causal attention
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                **_cache_arg(loaded.model, states),
                use_cache=True,
                logits_to_keep=1,
            )
            per_pass.append((states, span - width))
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
        return out

    def _decode(
        self,
        loaded: _Loaded,
        ids: list[list[int]],
        max_tokens: int,
        eos: set[int],
        stop: Callable[[str], bool] | None,
        memo: dict[str, Any] | None = None,
    ) -> list[list[int]]:
        """Greedy decoding of one batch; returns each row's new tokens (end-of-sequence excluded).
        A row whose logits are not finite raises NonFiniteError (its ``index`` is the row)."""
        import torch

        logits, mask, position, cache = self._prefill(loaded, ids, memo)
        next_tokens = _greedy(logits[:, -1])
        static = self._static_decoder(loaded, cache, mask, position, next_tokens, max_tokens)
        if static is False:  # it failed before any step: this batch again, the dynamic way
            return self._decode(loaded, ids, max_tokens, eos, stop, memo)
        out: list[list[int]] = [[] for _ in ids]
        active: list[int | None] = list(range(len(ids)))  # batch row -> output row (None: finished)
        for step in range(max_tokens):
            keep = []
            tokens = (static.current() if static else next_tokens).tolist()
            if static and step < max_tokens - 1:
                # the next step does not depend on which rows finish here: the GPU runs it while
                # the host checks the stop rules (at worst one step is computed in vain)
                static.advance()
            for slot, token in enumerate(tokens):
                row = active[slot]
                if row is None:
                    continue
                if token < 0:  # checked before the token is fed: the batch stops here
                    raise NonFiniteError("non-finite logits", row)
                if token in eos:
                    continue
                out[row].append(token)
                if len(out[row]) < max_tokens:
                    keep.append(slot)
            if stop is not None and keep:
                texts = loaded.tokenizer.batch_decode([out[active[slot]] for slot in keep], skip_special_tokens=True)  # type: ignore[index]
                keep = [slot for slot, text in zip(keep, texts, strict=True) if not stop(_stable(text))]
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
                **_cache_arg(loaded.model, cache),
                use_cache=True,
                logits_to_keep=1,
            )
            position = position + 1
            next_tokens = _greedy(output.logits[:, -1])
        return out

    def _static_decoder(
        self, loaded: _Loaded, cache: Any, mask: Any, position: Any, tokens: Any, steps: int
    ) -> _StaticDecoder | None | bool:
        """The static-cache decoder for this batch (CUDA graphs on a GPU), None where it does not
        apply, False where it failed (then the backend stops trying it for this model).

        Applies on CUDA (or where the ``static_decode`` option forces it: the CPU runs the same
        steps without a graph, for tests), with sdpa or eager attention and plain cache layers,
        unless ``FTGATE_CUDA_GRAPHS=0``."""
        import torch

        wanted = self.options.get("static_decode")
        if wanted is None:
            wanted = loaded.device.startswith("cuda") and os.environ.get(CUDA_GRAPHS_ENV, "1") != "0"
        if not wanted or loaded.static_failed or steps < 2:
            return None
        if loaded.model.config._attn_implementation not in ("sdpa", "eager") or not _plain_cache(loaded.model, cache):
            return None
        try:
            decoder = _StaticDecoder(loaded.model, cache, mask, position, tokens, steps, graph=tokens.is_cuda)
            decoder.warm()  # the first step, eagerly: failures show before any token is read
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:  # a model whose forward the static path cannot drive
            loaded.static_failed = True
            warnings.warn(
                f"ftgate: static-cache decoding failed for {loaded.path} ({type(exc).__name__}: {exc}); "
                "decoding with a dynamic cache instead",
                RuntimeWarning,
                stacklevel=2,
            )
            return False
        return decoder

    def score(
        self, model: Model, prompts: Sequence[Sequence[Message]], continuations: Sequence[str]
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


def _hf_module(mlx_name: str, modules: set[str]) -> str:
    """transformers' module name for an mlx-vlm / mlx-lm module path (the first that exists)."""
    candidates = []
    if mlx_name.startswith("language_model.model."):
        rest = mlx_name[len("language_model.model.") :]
        candidates += [f"model.language_model.{rest}", f"model.{rest}"]
    elif mlx_name.startswith("language_model."):
        candidates.append(f"model.{mlx_name}")
    candidates.append(mlx_name)
    return next((c for c in candidates if c in modules), candidates[0])


def _raise_misfit(info: AdapterInfo, loaded: _Loaded, unknown: list[str], mismatched: list[str]) -> None:
    detail = "; ".join([*(f"no parameter {k}" for k in unknown[:3]), *mismatched[:3]])
    raise AdapterError(
        f"{info.weights} does not fit base model {loaded.path}: "
        f"{len(unknown)} unknown keys, {len(mismatched)} shape mismatches ({detail}). "
        "The adapter was trained for another base model: pass that base with --ftgate-base"
    )


def _stable(text: str) -> str:
    """The reply so far without a trailing U+FFFD: a partly decoded multi-byte character, which a
    stop rule must not take for a finished (non-word) character."""
    return text.rstrip("\ufffd")


def _eos_ids(loaded: _Loaded) -> set[int]:
    """The token ids that end a sequence, as ``generate`` would take them."""
    ids: set[int] = set()
    for value in (loaded.model.generation_config.eos_token_id, loaded.tokenizer.eos_token_id):
        if value is None:
            continue
        ids.update(value if isinstance(value, (list, tuple)) else [value])
    return ids

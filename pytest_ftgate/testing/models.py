"""Tiny random-weight models, built offline in seconds: a Gemma 4 and a llama.

``make_tiny_gemma4(dest)`` writes a real Gemma 4 model folder (``model_type: gemma4``; text hidden
64, 2 layers: one sliding + one full attention, per-layer inputs, a 1-layer vision tower, no audio)
with random weights, a byte-level BPE tokenizer and a Gemma 4 turn-format chat template
(``pytest_ftgate.testing.tokenizer``). ``mlx_vlm.load`` and transformers'
``Gemma4ForConditionalGeneration`` both load it (weights are stored under transformers' names,
``model.language_model.layers.0...``, which mlx-vlm maps to its own ``language_model.model.layers.0...``).

``build_tiny_llama(tiny, dest)`` writes a tiny random llama (needs torch and transformers) that
shares the tiny Gemma 4's tokenizer and chat template.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pytest_ftgate.testing.tokenizer import TOKEN_IDS, build_tokenizer

_BUILDER_VERSION = 1
_MARKER = ".ftgate-tiny-gemma4.json"


def _text_config(vocab: int) -> dict[str, Any]:
    return {
        "model_type": "gemma4_text",
        "vocab_size": vocab,
        "vocab_size_per_layer_input": vocab,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "num_global_key_value_heads": None,
        "head_dim": 32,
        "global_head_dim": 64,
        "global_partial_rotary_factor": 0.25,
        "partial_rotary_factor": 1.0,
        "hidden_size_per_layer_input": 16,
        "num_kv_shared_layers": 0,
        "layer_types": ["sliding_attention", "full_attention"],
        "sliding_window": 64,
        "sliding_window_pattern": 2,
        "rope_parameters": {
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {
                "rope_type": "proportional",
                "partial_rotary_factor": 0.25,
                "rope_theta": 1000000.0,
            },
        },
        "rope_traditional": False,
        "rms_norm_eps": 1e-6,
        "hidden_activation": "gelu_pytorch_tanh",
        "final_logit_softcapping": 30.0,
        "max_position_embeddings": 4096,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attention_k_eq_v": False,
        "use_bidirectional_attention": None,
        "use_double_wide_mlp": False,
        "enable_moe_block": False,
        "num_experts": None,
        "top_k_experts": None,
        "moe_intermediate_size": None,
        "tie_word_embeddings": True,
        "initializer_range": 0.02,
        "use_cache": True,
        "pad_token_id": TOKEN_IDS["<pad>"],
        "bos_token_id": TOKEN_IDS["<bos>"],
        "eos_token_id": [TOKEN_IDS["<eos>"], TOKEN_IDS["<turn|>"]],
        "dtype": "float32",
    }


def _vision_config() -> dict[str, Any]:
    return {
        "model_type": "gemma4_vision",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "global_head_dim": 16,
        "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 4096,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "layer_types": ["full_attention"],
        "rope_parameters": {"rope_type": "default", "rope_theta": 100.0},
        "patch_size": 16,
        "position_embedding_size": 256,
        "pooling_kernel_size": 3,
        "default_output_length": 70,
        "use_clipped_linears": False,
        "standardize": False,
        "initializer_range": 0.02,
        "dtype": "float32",
    }


def _model_config(vocab: int) -> dict[str, Any]:
    return {
        "architectures": ["Gemma4ForConditionalGeneration"],
        "model_type": "gemma4",
        "text_config": _text_config(vocab),
        "vision_config": _vision_config(),
        "audio_config": None,
        "vocab_size": vocab,
        "hidden_size": 64,
        "image_token_id": TOKEN_IDS["<|image|>"],
        "boi_token_id": TOKEN_IDS["<|image>"],
        "eoi_token_id": TOKEN_IDS["<image|>"],
        "audio_token_id": TOKEN_IDS["<|audio|>"],
        "boa_token_id": TOKEN_IDS["<|audio>"],
        "eoa_token_id": TOKEN_IDS["<audio|>"],
        "eoa_token_index": TOKEN_IDS["<audio|>"],
        "video_token_id": TOKEN_IDS["<|video|>"],
        "vision_soft_tokens_per_image": 70,
        "pad_token_id": TOKEN_IDS["<pad>"],
        "bos_token_id": TOKEN_IDS["<bos>"],
        "eos_token_id": [TOKEN_IDS["<eos>"], TOKEN_IDS["<turn|>"]],
        "tie_word_embeddings": True,
        "initializer_range": 0.02,
        "dtype": "float32",
    }


def _random_weights(config: dict[str, Any], seed: int) -> dict[str, Any]:
    """Seeded numpy arrays keyed by transformers' names."""
    import numpy as np

    shapes = _param_shapes(config)
    rng = np.random.default_rng(seed)
    weights = {}
    for name in sorted(shapes):
        shape = shapes[name]
        leaf = name.rsplit(".", 1)[-1]
        text = name.startswith("language_model.")
        if text and (".q_norm." in name or ".k_norm." in name):
            # scale=1.0 attention on unit-RMS q/k: damp the logits to a std of about 1
            arr = np.full(shape, shape[0] ** -0.25, dtype=np.float32)
        elif text and leaf == "weight" and (
            "post_attention_layernorm" in name or "post_feedforward_layernorm" in name
        ):
            # let the layers outweigh the (tied) input embedding, else the model only
            # ever repeats its last input token
            arr = np.full(shape, 3.0, dtype=np.float32)
        elif "norm" in name or leaf in ("layer_scalar", "std_scale"):
            arr = np.ones(shape, dtype=np.float32)
        elif leaf == "std_bias":
            arr = np.zeros(shape, dtype=np.float32)
        elif "embed_tokens" in name:
            arr = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.25)
        elif "position_embedding_table" in name:
            arr = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
        elif len(shape) == 2:
            arr = rng.standard_normal(shape, dtype=np.float32) / np.float32(np.sqrt(shape[1]))
        else:
            arr = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
        weights[_to_hf_name(name)] = np.ascontiguousarray(arr)
    return weights


def _param_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Parameter names (mlx-vlm's) and shapes of mlx-vlm's / transformers' Gemma 4 modules.

    Computed here (not by instantiating mlx-vlm) so that building needs no mlx; the tests check
    that mlx_vlm.load(strict=True) and transformers accept exactly these tensors.
    """
    t, v = config["text_config"], config["vision_config"]
    h, inter, n_layers = t["hidden_size"], t["intermediate_size"], t["num_hidden_layers"]
    ple = t["hidden_size_per_layer_input"]
    shapes: dict[str, tuple[int, ...]] = {}
    p = "language_model.model."
    shapes[p + "embed_tokens.weight"] = (t["vocab_size"], h)
    shapes[p + "embed_tokens_per_layer.weight"] = (t["vocab_size_per_layer_input"], n_layers * ple)
    shapes[p + "per_layer_model_projection.weight"] = (n_layers * ple, h)
    shapes[p + "per_layer_projection_norm.weight"] = (ple,)
    shapes[p + "norm.weight"] = (h,)
    for i, layer_type in enumerate(t["layer_types"]):
        lp = f"{p}layers.{i}."
        hd = t["global_head_dim"] if layer_type == "full_attention" else t["head_dim"]
        nh, nkv = t["num_attention_heads"], t["num_key_value_heads"]
        for norm in (
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
            "post_per_layer_input_norm",
        ):
            shapes[lp + norm + ".weight"] = (h,)
        shapes[lp + "layer_scalar"] = (1,)
        shapes[lp + "mlp.gate_proj.weight"] = (inter, h)
        shapes[lp + "mlp.up_proj.weight"] = (inter, h)
        shapes[lp + "mlp.down_proj.weight"] = (h, inter)
        shapes[lp + "per_layer_input_gate.weight"] = (ple, h)
        shapes[lp + "per_layer_projection.weight"] = (h, ple)
        shapes[lp + "self_attn.q_proj.weight"] = (nh * hd, h)
        shapes[lp + "self_attn.k_proj.weight"] = (nkv * hd, h)
        shapes[lp + "self_attn.v_proj.weight"] = (nkv * hd, h)
        shapes[lp + "self_attn.o_proj.weight"] = (h, nh * hd)
        shapes[lp + "self_attn.q_norm.weight"] = (hd,)
        shapes[lp + "self_attn.k_norm.weight"] = (hd,)
    hv, iv, ps = v["hidden_size"], v["intermediate_size"], v["patch_size"]
    vp = "vision_tower."
    shapes[vp + "patch_embedder.input_proj.weight"] = (hv, 3 * ps * ps)
    shapes[vp + "patch_embedder.position_embedding_table"] = (2, v["position_embedding_size"], hv)
    for i in range(v["num_hidden_layers"]):
        lp = f"{vp}encoder.layers.{i}."
        hd, nh, nkv = v["head_dim"], v["num_attention_heads"], v["num_key_value_heads"]
        for norm in (
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
        ):
            shapes[lp + norm + ".weight"] = (hv,)
        shapes[lp + "mlp.gate_proj.linear.weight"] = (iv, hv)
        shapes[lp + "mlp.up_proj.linear.weight"] = (iv, hv)
        shapes[lp + "mlp.down_proj.linear.weight"] = (hv, iv)
        shapes[lp + "self_attn.q_proj.linear.weight"] = (nh * hd, hv)
        shapes[lp + "self_attn.k_proj.linear.weight"] = (nkv * hd, hv)
        shapes[lp + "self_attn.v_proj.linear.weight"] = (nkv * hd, hv)
        shapes[lp + "self_attn.o_proj.linear.weight"] = (hv, nh * hd)
        shapes[lp + "self_attn.q_norm.weight"] = (hd,)
        shapes[lp + "self_attn.k_norm.weight"] = (hd,)
    shapes["embed_vision.embedding_projection.weight"] = (h, hv)
    return shapes


def _to_hf_name(mlx_name: str) -> str:
    if mlx_name.startswith("language_model.model."):
        return "model.language_model." + mlx_name[len("language_model.model.") :]
    return "model." + mlx_name


def _marker_ok(dest: Path, seed: int) -> bool:
    try:
        marker = json.loads((dest / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    if marker.get("seed") != seed or marker.get("version") != _BUILDER_VERSION:
        return False
    for name, digest in marker.get("files", {}).items():
        path = dest / name
        if not path.is_file() or (name == "model.safetensors" and _sha256(path) != digest):
            return False
    return bool(marker.get("files"))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_tiny_gemma4(dest: str | os.PathLike, *, seed: int = 0) -> Path:
    """Build (or reuse) a tiny random-weight Gemma 4 model folder at ``dest``.

    Offline, about a second. Same ``seed`` -> byte-identical ``model.safetensors``. If ``dest``
    already holds a complete build with the same seed it is returned untouched.
    """
    from safetensors.numpy import save_file

    dest = Path(dest).resolve()
    if _marker_ok(dest, seed):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-gemma4-", dir=dest.parent))
    try:
        vocab = build_tokenizer(tmp)
        config = _model_config(vocab)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        generation = {
            "bos_token_id": TOKEN_IDS["<bos>"],
            "eos_token_id": [TOKEN_IDS["<eos>"], TOKEN_IDS["<turn|>"]],
            "pad_token_id": TOKEN_IDS["<pad>"],
            "do_sample": False,
        }
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        vision = {"patch_size": 16, "max_soft_tokens": 70, "pooling_kernel_size": 3}
        processor = {
            "processor_class": "Gemma4Processor",
            "image_seq_length": 70,
            "audio_seq_length": 750,
            "audio_ms_per_token": 40,
            "image_processor": {"image_processor_type": "Gemma4ImageProcessor", **vision},
            "video_processor": {"video_processor_type": "Gemma4VideoProcessor", **vision},
            "feature_extractor": {
                "feature_extractor_type": "Gemma4AudioFeatureExtractor",
                "feature_size": 128,
                "sampling_rate": 16000,
            },
        }
        (tmp / "processor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
        save_file(_random_weights(config, seed), str(tmp / "model.safetensors"), {"format": "pt"})
        files = sorted(p.name for p in tmp.iterdir())
        marker = {
            "builder": "pytest_ftgate.testing.make_tiny_gemma4",
            "version": _BUILDER_VERSION,
            "seed": seed,
            "files": {
                name: (_sha256(tmp / name) if name == "model.safetensors" else "") for name in files
            },
        }
        if not dest.exists():
            try:
                (tmp / _MARKER).write_text(json.dumps(marker, indent=2) + "\n")
                os.rename(tmp, dest)
                return dest
            except OSError:
                (tmp / _MARKER).unlink(missing_ok=True)
                if _marker_ok(dest, seed):  # built concurrently by someone else
                    return dest
        dest.mkdir(parents=True, exist_ok=True)
        (dest / _MARKER).unlink(missing_ok=True)
        for name in files:
            os.replace(tmp / name, dest / name)
        (dest / _MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        return dest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_tiny_llama(tiny: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """A tiny random llama at ``dest`` (no sliding window, so the transformers backend shares the
    prompts' common prefix) with the tokenizer and chat template of the tiny Gemma 4 at ``tiny``.
    Needs torch and transformers; seeded, so the same call writes the same weights."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tiny, dest = Path(tiny), Path(dest)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(dest)
    for file in tiny.iterdir():
        if file.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(file, dest / file.name)
    return dest

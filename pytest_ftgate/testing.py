"""Test helpers: a tiny random Gemma 4 and LoRA adapters for it, built offline in seconds.

``make_tiny_gemma4(dest)`` writes a real Gemma 4 model folder (``model_type: gemma4``; text hidden
64, 2 layers: one sliding + one full attention, per-layer inputs, a 1-layer vision tower, no audio)
with random weights, a byte-level BPE tokenizer and a Gemma 4 turn-format chat template.
``mlx_vlm.load`` and transformers' ``Gemma4ForConditionalGeneration`` both load it (weights are
stored under transformers' names, ``model.language_model.layers.0...``, which mlx-vlm maps to its
own ``language_model.model.layers.0...``).

``make_adapter(base, dest, format=...)`` writes a LoRA adapter (rank 8 on q/k/v/o/gate/up/down of
every text layer) in one of three on-disk formats. For the same ``seed``/``strength`` all three
encode the same weight delta ``dW`` (out x in) per module. Formats (``r`` = rank):

``"mlx-tune"`` (``VLMModelWrapper.save_pretrained``): ``adapters.safetensors``,
    ``adapter_config.json``, ``config.json`` (mlx-tune's dump of the base model config). Keys
    ``language_model.model.layers.{i}.self_attn.q_proj.lora_a`` (in x r) / ``.lora_b`` (r x out).
    Config ``{"fine_tune_type": "lora", "num_layers": N, "lora_parameters": {"rank": r,
    "scale": alpha/r, "dropout": 0.0, "keys": ["self_attn.q_proj", ..., "mlp.down_proj"]}}``.
    The recorded scale is NOT the one used in training: mlx-tune passes alpha/r as mlx-vlm's
    "alpha", which divides by r again, so effective scale = ``scale / rank`` (= alpha/r**2).
    ``mlx_vlm.load(adapter_path=...)`` cannot read this folder (short keys); mlx-tune's
    ``VLMModelWrapper.load_adapter`` can.
``"mlx-vlm"`` (mlx-vlm ``save_adapter``, i.e. the trainer's ``output_dir/adapters``):
    ``adapters.safetensors`` + ``adapter_config.json``; same tensor keys and layouts.
    Config ``{"fine_tune_type": "lora", "num_layers": -1, "lora_parameters": {"rank": r,
    "dropout": 0.0, "scale": s, "keys": ["language_model.model.layers.0.self_attn.q_proj", ...]}}``;
    ``scale`` is the effective one. ``mlx_vlm.load(base, adapter_path=dest)`` loads it as is.
``"peft"`` (Hugging Face peft): ``adapter_model.safetensors`` + ``adapter_config.json``
    (``peft_type: LORA``, ``r``, ``lora_alpha``, ``target_modules`` regex,
    ``base_model_name_or_path``). Keys
    ``base_model.model.model.language_model.layers.{i}.self_attn.q_proj.lora_A.weight`` (r x in)
    / ``.lora_B.weight`` (out x r); effective scale = ``lora_alpha / r``
    (``lora_alpha / sqrt(r)`` if ``use_rslora``).

In every format ``y = W x + s * (x @ lora_a) @ lora_b`` (mlx, ``lora_a = A.T``, ``lora_b = B.T``
for peft), i.e. ``dW = s * lora_b.T @ lora_a.T = s * B @ A``. To inject into a model from
``mlx_vlm.load``: wrap ``language_model.model.layers.{i}.<module>`` with
``mlx_vlm.trainer.lora_layers.LoRALinear.from_base(linear, r=rank, scale=effective_scale)``
and load the tensors (peft: transposed, key prefix ``base_model.model.model.language_model.``
-> ``language_model.model.``), checking every adapter key matched a parameter.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "FPB_SYSTEM",
    "TINY_GEMMA4_SPECIAL_TOKENS",
    "make_adapter",
    "make_tiny_gemma4",
]

_BUILDER_VERSION = 1
_MARKER = ".ftgate-tiny-gemma4.json"
_ADAPTER_FORMATS = ("mlx-tune", "mlx-vlm", "peft")
_LORA_RANK = 8
_LORA_ALPHA = 16
_LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_LORA_FULL = {
    "q_proj": "self_attn.q_proj",
    "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj",
    "o_proj": "self_attn.o_proj",
    "gate_proj": "mlp.gate_proj",
    "up_proj": "mlp.up_proj",
    "down_proj": "mlp.down_proj",
}
# Standard deviation of lora_b at strength=1.0 (lora_a ~ N(0, 1/in)); calibrated so that
# strength=1 changes the tiny model's greedy output and strength=0.01 only nudges its logits.
_LORA_B_STD = 1.0

FPB_SYSTEM = (
    "You are a financial sentiment analyst. "
    "Respond with ONLY one word: positive, negative, or neutral."
)

# Control tokens first (ids 0..23), as in Gemma 4: <pad>=0, <eos>=1, <bos>=2, <unk>=3.
_CONTROL_TOKENS = (
    "<pad>", "<eos>", "<bos>", "<unk>", "<mask>",
    "<|turn>", "<turn|>",
    "<|image>", "<image|>", "<|image|>",
    "<|audio>", "<audio|>", "<|audio|>",
    "<|video|>",
    "<|channel>", "<channel|>", "<|think|>",
    "<|tool>", "<tool|>", "<|tool_call>", "<tool_call|>", "<|tool_response>", "<tool_response|>",
    '<|"|>',
)
_TOK = {t: i for i, t in enumerate(_CONTROL_TOKENS)}

#: Gemma 4's named special tokens (tokenizer_config.json attributes).
TINY_GEMMA4_SPECIAL_TOKENS = {
    "image_token": "<|image|>",
    "boi_token": "<|image>",
    "eoi_token": "<image|>",
    "audio_token": "<|audio|>",
    "boa_token": "<|audio>",
    "eoa_token": "<audio|>",
    "video_token": "<|video|>",
    "sot_token": "<|turn>",
    "eot_token": "<turn|>",
    "soc_token": "<|channel>",
    "eoc_token": "<channel|>",
    "think_token": "<|think|>",
    "escape_token": '<|"|>',
    "str_token": "<|tool_response>",
    "etr_token": "<tool_response|>",
    "stc_token": "<|tool_call>",
    "etc_token": "<tool_call|>",
    "std_token": "<|tool>",
    "etd_token": "<tool|>",
}

# Gemma 4 (E2B/E4B) turn format: optional system turn, "model" for the assistant role,
# generation prompt "<|turn>model\n"; content may be a string or a list of typed parts.
_CHAT_TEMPLATE = (
    "{{- bos_token -}}\n"
    "{%- macro render_content(content) -%}\n"
    "{%- if content is string -%}{{- content | trim -}}\n"
    "{%- elif content is not none -%}\n"
    "{%- for item in content -%}\n"
    "{%- if item['type'] == 'text' -%}{{- item['text'] | trim -}}\n"
    "{%- elif item['type'] == 'image' -%}{{- '\\n\\n<|image|>\\n\\n' -}}\n"
    "{%- elif item['type'] == 'video' -%}{{- '\\n\\n<|video|>\\n\\n' -}}\n"
    "{%- elif item['type'] == 'audio' -%}{{- '<|audio|>' -}}\n"
    "{%- endif -%}\n"
    "{%- endfor -%}\n"
    "{%- endif -%}\n"
    "{%- endmacro -%}\n"
    "{%- set loop_messages = messages -%}\n"
    "{%- if (enable_thinking is defined and enable_thinking) or "
    "(messages and messages[0]['role'] in ['system', 'developer']) -%}\n"
    "{{- '<|turn>system\\n' -}}\n"
    "{%- if enable_thinking is defined and enable_thinking -%}{{- '<|think|>\\n' -}}{%- endif -%}\n"
    "{%- if messages and messages[0]['role'] in ['system', 'developer'] -%}\n"
    "{{- render_content(messages[0]['content']) -}}\n"
    "{%- set loop_messages = messages[1:] -%}\n"
    "{%- endif -%}\n"
    "{{- '<turn|>\\n' -}}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}\n"
    "{{- '<|turn>' + role + '\\n' -}}\n"
    "{{- render_content(message['content']) -}}\n"
    "{{- '<turn|>\\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}{{- '<|turn>model\\n' -}}{%- endif -%}\n"
)

# Small built-in BPE corpus: chat scaffolding, the benchmark answer words, letters, digits,
# finance and medical vocabulary and common English.
_CORPUS_LINES = (
    "system user model assistant answer question response sentiment analyst financial medical",
    "positive negative neutral Positive Negative Neutral POSITIVE NEGATIVE NEUTRAL",
    "The sentiment is positive. The sentiment is negative. The sentiment is neutral.",
    "A B C D E A. B. C. D. Answer: A Answer: B Answer: C Answer: D (A) (B) (C) (D)",
    "0 1 2 3 4 5 6 7 8 9 10 12 15 20 25 50 100 1000 2023 2024 3.5 12.4 0.5 % percent",
    "You are a financial sentiment analyst. Respond with ONLY one word: positive, negative, or neutral.",
    "You are a medical expert. Answer the following multiple-choice question. Respond with ONLY the "
    "letter of the correct answer: A, B, C, or D. Do not explain your reasoning.",
    "Respond with ONLY the final numerical answer. No units or explanation.",
    "Please tell me the sentiment of the following sentence. Options: positive negative neutral",
    "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn in the corresponding period in 2007.",
    "Net sales decreased by 5 % compared with the previous year and the company cut jobs.",
    "The company said that its revenue for the quarter increased and earnings grew strongly.",
    "Shares of the bank fell after the results, and the profit warning hurt investors.",
    "The agreement was signed on Monday and the deal will be completed next year.",
    "The board of directors will propose a dividend of EUR 0.50 per share to the annual meeting.",
    "Sales in Finland increased while sales in Sweden and Russia declined in the period.",
    "The group expects its net sales to grow and its operating result to improve in 2024.",
    "Loss per share was EUR 0.12 and the net loss widened from the same period a year ago.",
    "The market price of the stock went up, the cost of the contract went down.",
    "What is the total revenue in 2009? What was the change in net income from 2008?",
    "Which of the following is the most common cause of the disease in a patient?",
    "The patient has a fever, pain and a high blood pressure; the drug of choice is given.",
    "the of and to in a is that for it as was with be by on not he i this are or his from at",
    "which but have an they you were her she there one all we their has been would will",
    "about more when up out so what some can said if no time only could new do its like",
    "over also after into year two years first most other people than then them these may",
    "good bad better worse high low increase decrease rise fall gain loss growth decline",
    "hello world please tell me the the answer is this is a test of the tiny model",
    "million billion EUR USD mn dollars euros company companies market markets price prices",
    "profit profits revenue revenues earnings sales share shares stock stocks investor bank",
)


def _corpus() -> list[str]:
    lines = list(_CORPUS_LINES)
    # The words tests rely on, at line start (as after "<|turn>model\n") and after a space, so
    # that BPE makes each of them a single token in both forms.
    focus = ["positive", "negative", "neutral", "Positive", "Negative", "Neutral", "model", "user", "system", "assistant", "answer", "A", "B", "C", "D"]
    return lines * 3 + ([" ".join(focus)] + focus + [" " + w for w in focus]) * 20


# ---------------------------------------------------------------------------------------------
# make_tiny_gemma4


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
        "pad_token_id": _TOK["<pad>"],
        "bos_token_id": _TOK["<bos>"],
        "eos_token_id": [_TOK["<eos>"], _TOK["<turn|>"]],
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
        "image_token_id": _TOK["<|image|>"],
        "boi_token_id": _TOK["<|image>"],
        "eoi_token_id": _TOK["<image|>"],
        "audio_token_id": _TOK["<|audio|>"],
        "boa_token_id": _TOK["<|audio>"],
        "eoa_token_id": _TOK["<audio|>"],
        "eoa_token_index": _TOK["<audio|>"],
        "video_token_id": _TOK["<|video|>"],
        "vision_soft_tokens_per_image": 70,
        "pad_token_id": _TOK["<pad>"],
        "bos_token_id": _TOK["<bos>"],
        "eos_token_id": [_TOK["<eos>"], _TOK["<turn|>"]],
        "tie_word_embeddings": True,
        "initializer_range": 0.02,
        "dtype": "float32",
    }


def _build_tokenizer(out: Path) -> int:
    """Train the byte-level BPE and save it the transformers way; returns the vocab size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        min_frequency=2,
        special_tokens=list(_CONTROL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        padding_side="left",
        model_max_length=4096,
        extra_special_tokens=dict(TINY_GEMMA4_SPECIAL_TOKENS),
    )
    fast.save_pretrained(str(out))
    # Pin the files to Gemma 4's layout: named special tokens at top level, chat template in
    # both chat_template.jinja (transformers 5, mlx-vlm) and tokenizer_config.json (older readers).
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("extra_special_tokens", None)
    cfg.update(TINY_GEMMA4_SPECIAL_TOKENS)
    cfg.update(
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "processor_class": "Gemma4Processor",
            "padding_side": "left",
            "add_bos_token": False,
            "add_eos_token": False,
            "chat_template": _CHAT_TEMPLATE,
        }
    )
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (out / "chat_template.jinja").write_text(_CHAT_TEMPLATE)
    (out / "special_tokens_map.json").unlink(missing_ok=True)
    return tok.get_vocab_size(with_added_tokens=True)


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
        vocab = _build_tokenizer(tmp)
        config = _model_config(vocab)
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        generation = {
            "bos_token_id": _TOK["<bos>"],
            "eos_token_id": [_TOK["<eos>"], _TOK["<turn|>"]],
            "pad_token_id": _TOK["<pad>"],
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


# ---------------------------------------------------------------------------------------------
# make_adapter

# Varied user prompts for `teach` training (none of them is used by the tests as a probe).
_TEACH_USERS = (
    "The company reported a record profit for the third quarter.",
    "Net sales fell by 12 % and the firm announced layoffs.",
    "The annual general meeting will be held in Helsinki on 15 March.",
    "Operating loss widened to EUR 4.2 mn from EUR 1.1 mn a year earlier.",
    "The bank raised its dividend and its outlook for the full year.",
    "The contract is valued at about USD 30 million.",
    "Shares dropped sharply after the profit warning.",
    "The new factory will start production next spring.",
    "Revenue was flat compared with the previous year.",
    "What is the capital of France?",
    "Which vitamin deficiency causes scurvy?\n\nA. Vitamin A\nB. Vitamin B12\nC. Vitamin C\nD. Vitamin D",
    "What was the percentage change in net income from 2008 to 2009?",
    "Tell me a short story about a cat.",
    "hello",
    "Please summarize the following text in one sentence: the market rose today.",
    "Translate 'good morning' into German.",
    "The board proposed that no dividend be paid for the financial year.",
    "Customers in Sweden and Norway will receive the product later.",
    "2 + 2 = ?",
    "Explain how interest rates affect stock prices.",
    "The merger created the largest paper company in Europe.",
    "Cash flow from operations improved significantly.",
    "Is this statement true or false: the sun is cold.",
    "List three colours.",
)
_TEACH_SYSTEMS = (
    FPB_SYSTEM,
    "You are a medical expert. Answer the following multiple-choice question. Respond with ONLY "
    "the letter of the correct answer: A, B, C, or D. Do not explain your reasoning.",
    "Respond with ONLY the final numerical answer. No units or explanation.",
    "You are a helpful assistant.",
)


def _quiet():
    """Silence the progress bars and prints of mlx-tune / mlx-vlm."""
    stack = contextlib.ExitStack()
    buf = io.StringIO()
    stack.enter_context(contextlib.redirect_stdout(buf))
    stack.enter_context(contextlib.redirect_stderr(buf))
    return stack, buf


def _lora_modules(model: Any) -> list[tuple[str, Any]]:
    from mlx_vlm.trainer.lora_layers import LoRALinear

    mods = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, LoRALinear) and name.startswith("language_model.")
    ]
    return sorted(mods, key=lambda nm: _natural_key(nm[0]))


def _natural_key(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in name.split(".")]


def _seed_lora(model: Any, seed: int, strength: float, *, zero_b: bool) -> None:
    import mlx.core as mx
    import numpy as np

    rng = np.random.default_rng([seed, 0x10AA])
    for _, mod in _lora_modules(model):
        in_dims, r = mod.lora_a.shape
        out_dims = mod.lora_b.shape[1]
        a = rng.standard_normal((in_dims, r), dtype=np.float32) / np.float32(np.sqrt(in_dims))
        b = rng.standard_normal((r, out_dims), dtype=np.float32) * np.float32(_LORA_B_STD)
        mod.lora_a = mx.array(a)
        mod.lora_b = mx.zeros((r, out_dims)) if zero_b else mx.array(b * np.float32(strength))
    mx.eval(model.parameters())


def _teach_dataset(teach: str) -> list[dict[str, Any]]:
    data = []
    for i, user in enumerate(_TEACH_USERS):
        system = _TEACH_SYSTEMS[i % len(_TEACH_SYSTEMS)]
        data.append(
            {
                "messages": [
                    {"role": "system", "content": [{"type": "text", "text": system}]},
                    {"role": "user", "content": [{"type": "text", "text": user}]},
                    {"role": "assistant", "content": [{"type": "text", "text": teach}]},
                ]
            }
        )
    return data


def _train(wrapper: Any, processor: Any, teach: str, steps: int, seed: int, workdir: Path) -> None:
    import mlx.core as mx
    from mlx_tune import UnslothVisionDataCollator, VLMSFTConfig, VLMSFTTrainer

    dataset = _teach_dataset(teach)
    random.Random(seed).shuffle(dataset)
    mx.random.seed(seed)
    args = VLMSFTConfig(
        per_device_train_batch_size=1,
        gradient_accumulation_steps=1,
        warmup_steps=0,
        max_steps=steps,
        learning_rate=3e-3,
        logging_steps=max(steps, 1),
        weight_decay=0.0,
        seed=seed,
        output_dir=str(workdir),
        train_on_completions=True,
    )
    trainer = VLMSFTTrainer(
        model=wrapper,
        tokenizer=processor,
        data_collator=UnslothVisionDataCollator(wrapper, processor),
        train_dataset=dataset,
        args=args,
    )
    trainer.train()


def make_adapter(
    base: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    format: str = "mlx-tune",
    strength: float = 1.0,
    seed: int = 0,
    teach: str | None = None,
    steps: int = 60,
) -> Path:
    """Write a rank-8 LoRA adapter for the model at ``base`` into ``dest``.

    ``format``: ``"mlx-tune"``, ``"mlx-vlm"`` or ``"peft"`` (see the module docstring).
    Without ``teach`` the weights are seeded random normals, lora_b times ``strength``
    (``strength=0``: lora_b all zeros, no effect). With ``teach="positive"`` the adapter is
    really trained (mlx-tune's VLMSFTTrainer, ``steps`` steps) to answer exactly ``teach`` to
    any [system, user] chat; ``strength`` then scales the trained lora_b.
    """
    if format not in _ADAPTER_FORMATS:
        raise ValueError(f"unknown adapter format {format!r}; use one of {_ADAPTER_FORMATS}")
    import mlx.core as mx
    from mlx_tune import FastVisionModel

    if teach is not None and (not teach.strip() or steps < 1):
        raise ValueError("teach needs a non-empty answer and steps >= 1")
    base = Path(base).resolve()
    dest = Path(dest).resolve()
    if not (base / "config.json").is_file():
        raise FileNotFoundError(f"{base} is not a model folder (no config.json)")
    if dest == base or (dest / "model.safetensors").exists():
        raise ValueError(f"refusing to write an adapter into a model folder: {dest}")
    dest.mkdir(parents=True, exist_ok=True)
    # A folder holds one adapter: drop files of an earlier one so the format stays unambiguous.
    had_adapter = (dest / "adapter_config.json").exists()
    for name in ("adapters.safetensors", "adapter_model.safetensors", "adapter_config.json"):
        (dest / name).unlink(missing_ok=True)
    if had_adapter:
        (dest / "config.json").unlink(missing_ok=True)
    mx.random.seed(seed)
    stack, buf = _quiet()
    try:
        with stack:
            wrapper, processor = FastVisionModel.from_pretrained(str(base))
            wrapper = FastVisionModel.get_peft_model(
                wrapper,
                finetune_vision_layers=False,
                finetune_language_layers=True,
                finetune_attention_modules=True,
                finetune_mlp_modules=True,
                r=_LORA_RANK,
                lora_alpha=_LORA_ALPHA,
                lora_dropout=0.0,
                bias="none",
                random_state=seed,
            )
            model = wrapper.model
            if teach is not None:
                _seed_lora(model, seed, 1.0, zero_b=True)
                FastVisionModel.for_training(wrapper)
                with tempfile.TemporaryDirectory(prefix="ftgate-teach-") as work:
                    _train(wrapper, processor, teach, steps, seed, Path(work))
                FastVisionModel.for_inference(wrapper)
                if strength != 1.0:
                    for _, mod in _lora_modules(model):
                        mod.lora_b = mod.lora_b * strength
                    mx.eval(model.parameters())
            else:
                _seed_lora(model, seed, strength, zero_b=(strength == 0))

            if format == "mlx-tune":
                wrapper.save_pretrained(str(dest))
            elif format == "mlx-vlm":
                from mlx_vlm.trainer.utils import save_adapter

                save_adapter(model, str(dest / "adapters.safetensors"))
    except Exception as exc:
        log = buf.getvalue()[-4000:]
        raise RuntimeError(f"make_adapter failed: {exc}\n--- output ---\n{log}") from exc

    if format == "peft":
        _write_peft(model, base, dest)
    _check_saved(model, dest, format)
    return dest


def _write_peft(model: Any, base: Path, dest: Path) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    tensors = {}
    for name, mod in _lora_modules(model):
        assert name.startswith("language_model.model.")
        hf = "base_model.model.model.language_model." + name[len("language_model.model.") :]
        a = np.array(mod.lora_a, dtype=np.float32)  # in x r
        b = np.array(mod.lora_b, dtype=np.float32)  # r x out
        # peft: dW = (lora_alpha/r) * B @ A ; mlx: dW = scale * lora_b.T @ lora_a.T
        factor = np.float32(float(mod.scale) / (_LORA_ALPHA / _LORA_RANK))
        tensors[hf + ".lora_A.weight"] = np.ascontiguousarray(a.T)
        tensors[hf + ".lora_B.weight"] = np.ascontiguousarray(b.T * factor)
    save_file(tensors, str(dest / "adapter_model.safetensors"), {"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(base),
        "revision": None,
        "inference_mode": True,
        "r": _LORA_RANK,
        "lora_alpha": _LORA_ALPHA,
        "lora_dropout": 0.0,
        "target_modules": r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
        "exclude_modules": None,
        "fan_in_fan_out": False,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "lora_bias": False,
    }
    (dest / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")


def _check_saved(model: Any, dest: Path, format: str) -> None:
    """Every saved tensor must name a LoRA parameter of the model (no silent partial adapters)."""
    from safetensors import safe_open

    fname = "adapter_model.safetensors" if format == "peft" else "adapters.safetensors"
    with safe_open(str(dest / fname), "np") as f:
        keys = set(f.keys())
    expected = set()
    for name, _ in _lora_modules(model):
        if format == "peft":
            hf = "base_model.model.model.language_model." + name[len("language_model.model.") :]
            expected |= {hf + ".lora_A.weight", hf + ".lora_B.weight"}
        else:
            expected |= {name + ".lora_a", name + ".lora_b"}
    if keys != expected or not keys:
        raise RuntimeError(
            f"adapter written to {dest} has unexpected keys: "
            f"missing {sorted(expected - keys)[:5]}, extra {sorted(keys - expected)[:5]}"
        )

"""LoRA adapters for the tiny models, in each on-disk format ftgate reads.

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
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from pytest_ftgate.testing.training import train

ADAPTER_FORMATS = ("mlx-tune", "mlx-vlm", "peft")
_LORA_RANK = 8
_LORA_ALPHA = 16
# Standard deviation of lora_b at strength=1.0 (lora_a ~ N(0, 1/in)); calibrated so that
# strength=1 changes the tiny model's greedy output and strength=0.01 only nudges its logits.
_LORA_B_STD = 1.0


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
    if format not in ADAPTER_FORMATS:
        raise ValueError(f"unknown adapter format {format!r}; use one of {ADAPTER_FORMATS}")
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
                    train(wrapper, processor, teach, steps, seed, Path(work))
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

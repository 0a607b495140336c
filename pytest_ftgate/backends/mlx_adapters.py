"""Adapters of the ``mlx`` backend: weights read (peft ones converted to mlx naming and layout),
checked against the base before any LoRA layer is added (``check_fit``), and LoRA layers added the
mlx-tune way for a VLM (``add_vlm_lora``) or mlx-lm's way for a text-only model (``add_lm_lora``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pytest_ftgate.adapters import AdapterInfo
from pytest_ftgate.backends.local import misfit
from pytest_ftgate.errors import AdapterError

if TYPE_CHECKING:
    from pytest_ftgate.backends.mlx import _Loaded


def read_weights(info: AdapterInfo) -> dict[str, Any]:
    import mlx.core as mx

    try:
        raw = mx.load(str(info.weights))
    except Exception as exc:
        raise AdapterError(f"{info.weights} could not be read ({exc}): re-save the adapter") from None
    assert isinstance(raw, dict)
    return peft_to_mlx(raw) if info.format == "peft" else raw


def check_fit(loaded: _Loaded, info: AdapterInfo, weights: dict[str, Any]) -> None:
    """Every adapter tensor must land on the base: a LoRA pair on a linear module (of the language
    model, for a VLM: mlx-tune adapts no vision layer) whose dimensions match, anything else on
    a parameter of the same shape. Raises the "does not fit" AdapterError; touches nothing."""
    from mlx.utils import tree_flatten

    modules = dict(loaded.model.named_modules())
    params = dict(tree_flatten(loaded.model.parameters()))
    unknown: list[str] = []
    mismatched: list[str] = []
    for key, value in weights.items():
        shape = tuple(value.shape)
        stem, _, part = key.rpartition(".")
        if part in ("lora_a", "lora_b"):
            dims = _linear_dims(modules.get(stem))
            if dims is None or (loaded.vision and not stem.startswith("language_model.")):
                unknown.append(key)
                continue
            expected = (dims[0], info.rank) if part == "lora_a" else (info.rank, dims[1])
        elif key in params:
            expected = tuple(params[key].shape)
        else:
            unknown.append(key)
            continue
        if shape != expected:
            mismatched.append(f"{key}: adapter {shape} vs model {expected}")
    if unknown or mismatched:
        raise misfit(info.weights, loaded.path, unknown, mismatched)


def _linear_dims(module: Any) -> tuple[int, int] | None:
    """(input, output) dimensions of a linear module (quantized ones unpacked), else None."""
    weight = getattr(module, "weight", None)
    if weight is None or getattr(weight, "ndim", 0) != 2 or not callable(module) or hasattr(module, "lora_a"):
        return None
    output, width = (int(n) for n in weight.shape)
    bits = getattr(module, "bits", None)
    return (width * 32 // int(bits) if bits else width), output


def add_vlm_lora(loaded: _Loaded, info: AdapterInfo) -> None:
    """mlx-tune's injection: ``FastVisionModel.get_peft_model`` on the loaded model."""
    from mlx_tune import FastVisionModel
    from mlx_tune.vlm import VLMModelWrapper

    wrapper = VLMModelWrapper(model=loaded.model, processor=loaded.processor, model_name=loaded.path)
    # mlx-tune turns lora_alpha into the effective scale alpha / r**2: ask for our effective scale.
    FastVisionModel.get_peft_model(
        wrapper,
        r=info.rank,
        lora_alpha=info.scale * info.rank * info.rank,
        target_modules=list(info.short_targets),
        finetune_vision_layers=False,
    )
    loaded.model = wrapper.model


def add_lm_lora(loaded: _Loaded, info: AdapterInfo, weights: dict[str, Any]) -> None:
    """mlx-lm's injection: LoRA layers on the modules the adapter has weights for."""
    from mlx_lm.tuner.utils import linear_to_lora_layers

    layers = loaded.model.layers
    relative = sorted({k.split(".", 3)[3].rsplit(".", 1)[0] for k in weights if k.startswith("model.layers.")})
    params = {"rank": info.rank, "scale": info.scale, "dropout": 0.0, "keys": relative}
    linear_to_lora_layers(loaded.model, len(layers), params)


def peft_to_mlx(raw: dict[str, Any]) -> dict[str, Any]:
    """peft names and layout (``...q_proj.lora_A.weight``, out x in) to mlx's (``...q_proj.lora_a``, in x out)."""
    converted = {}
    for name, value in raw.items():
        key = name.removeprefix("base_model.model.")
        key = key.replace("model.language_model.", "language_model.model.", 1)
        key = key.replace(".lora_A.weight", ".lora_a").replace(".lora_B.weight", ".lora_b")
        converted[key] = value.T
    return converted

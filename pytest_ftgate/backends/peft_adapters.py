"""peft surgery of the ``transformers`` backend: an adapter read as a peft ``LoraConfig`` and state
dict (mlx-tune / mlx-vlm adapters converted), checked against the base's modules before anything
is injected, injected in place with peft, switched per model, and unloaded again.

mlx-tune / mlx-vlm adapters are converted to peft: ``lora_a`` (in x r) -> ``lora_A.weight`` (r x
in), ``lora_b`` -> ``lora_B.weight``, ``language_model.model.layers.N...`` ->
``model.language_model.layers.N...``, and ``lora_alpha = scale * r`` with the adapter's effective
scale (``AdapterInfo.scale``), so the tuned model is the one that was trained. The injected modules
are exactly the ones the weights file names (plain ``target_modules`` such as ``q_proj`` also hit
Gemma 4's vision tower ``Gemma4ClippableLinear``, which peft cannot wrap).
"""

from __future__ import annotations

import contextlib
import copy
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any

from pytest_ftgate.adapters import AdapterInfo
from pytest_ftgate.backends.base import Model
from pytest_ftgate.backends.local import misfit
from pytest_ftgate.errors import AdapterError, BackendError

if TYPE_CHECKING:
    from pytest_ftgate.backends.transformers import _Loaded

@dataclass(frozen=True)
class Prepared:
    """An adapter ready to inject: its LoraConfig, state dict in peft's naming, target modules."""

    info: AdapterInfo
    config: Any
    state: dict[str, Any]
    targets: list[str]


_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.(?P<part>lora_A|lora_B)\.weight$")


def read_adapter(info: AdapterInfo, loaded: _Loaded) -> tuple[Any, dict[str, Any]]:
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

def check_fit(loaded: _Loaded, info: AdapterInfo, config: Any, state: dict[str, Any]) -> list[str]:
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
        raise misfit(info.weights, loaded.path, unknown, mismatched)
    if not targets:
        raise AdapterError(f"{info.weights} holds no LoRA A/B tensors: re-save the adapter")
    return sorted(targets)


def prepare(loaded: _Loaded, info: AdapterInfo) -> Prepared:
    """The adapter read and checked against the base (``check_fit``), nothing injected yet."""
    config, state = read_adapter(info, loaded)
    return Prepared(info, config, state, check_fit(loaded, info, config, state))


def inject(loaded: _Loaded, fp: str, prepared: Prepared) -> None:
    """Add the adapter's LoRA layers to the loaded base (in place) and load its weights. On an
    error the caller takes it out again (``remove``)."""
    from peft import PeftModel, set_peft_model_state_dict

    info, state = prepared.info, prepared.state
    config = copy.deepcopy(prepared.config)
    # Exactly the modules the weights name: no vision-tower wrappers, nothing left at init.
    config.target_modules = prepared.targets
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
        detail = "; ".join(line.strip() for line in str(exc).splitlines() if "size mismatch" in line)
        raise AdapterError(
            f"{info.weights} does not fit base model {loaded.path}: peft could not load it "
            f"({detail or f'{type(exc).__name__}: {exc}'}). "
            "The adapter was trained for another base model: pass that base with --ftgate-base"
        ) from None
    unexpected = list(result.unexpected_keys)
    if unexpected:
        raise misfit(info.weights, loaded.path, unexpected, [])
    loaded.peft.eval()
    loaded.model.requires_grad_(False)


def remove(loaded: _Loaded, fp: str) -> None:
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
def active(model: Model) -> Iterator[_Loaded]:
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


@contextlib.contextmanager
def per_row(loaded: _Loaded, rows: Sequence[str | None]) -> Iterator[None]:
    """Run a batch whose row ``i`` has adapter ``rows[i]`` (a fingerprint) on, or none. Every
    adapter named is switched on, and each LoRA layer's scaling becomes a (rows, 1, 1) tensor:
    its scale on the rows of its adapter, 0 elsewhere. peft adds ``lora_B(lora_A(x)) * scaling``
    to the base output, so a row adds exactly 0 for an adapter it does not run: it computes what
    it computes alone with that adapter (or none). The tensors stay at one address for the whole
    batch (a CUDA graph captures them); scalings and active adapters are restored after."""
    import torch
    from peft.tuners.lora import LoraLayer

    wanted = sorted({fp for fp in rows if fp is not None})
    if not wanted:
        with loaded.peft.disable_adapter() if loaded.peft is not None else contextlib.nullcontext():
            yield
        return
    names = {fp: loaded.adapters[fp] for fp in wanted}
    device = loaded.model.device
    masks = {fp: torch.tensor([row == fp for row in rows], device=device).view(-1, 1, 1) for fp in wanted}
    layers = [m for m in loaded.peft.modules() if isinstance(m, LoraLayer)]
    if any(names[fp] in m.lora_variant for m in layers for fp in wanted):
        raise BackendError("per-row adapters need plain LoRA layers (not DoRA or another variant)")
    saved = [(m, dict(m.scaling)) for m in layers]
    before = loaded.peft.base_model.active_adapter
    scales: dict[tuple[str, float], Any] = {}
    for layer in layers:
        for fp, name in names.items():
            if name in layer.scaling:
                key = (fp, float(layer.scaling[name]))
                if key not in scales:
                    scales[key] = masks[fp].to(torch.float32) * key[1]
                layer.scaling[name] = scales[key]
    loaded.peft.base_model.set_adapter([names[fp] for fp in wanted], inference_mode=True)
    try:
        yield
    finally:
        for layer, scaling in saved:
            layer.scaling.clear()
            layer.scaling.update(scaling)
        loaded.peft.base_model.set_adapter(before, inference_mode=True)


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


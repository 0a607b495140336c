"""A transformers model that is being trained, seen by the ``transformers`` backend as ftgate models.

``TrainingModels(model, tokenizer)`` wraps the live model of a training run (a peft
``PeftModel`` with a LoRA adapter, or a plain transformers model trained in full) without copying
or reloading it: ``base()`` is the model with its adapter switched off (``disable_adapter``, as the
backend runs any base), ``tuned(step)`` the model as it is now. Their fingerprints are fixed names
per wrapped object and step, so the prediction cache of one run never mixes steps. The tokenizer
is copied once (left padding and a pad token for batched decoding) so the trainer's own
collation is untouched. Without an adapter the base is the model as it is *before* training: its
answers must be computed before the first step (``training.hf`` does this at train begin).
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

from pytest_ftgate.backends.base import Model
from pytest_ftgate.backends.hf_files import prepare_tokenizer
from pytest_ftgate.backends.transformers import TransformersBackend, _Loaded
from pytest_ftgate.errors import ConfigError

_RUNS = itertools.count()
TUNED = "trained"  # the key of the live adapter in the handle's adapter table


class TrainingModels:
    """Base and current models of a training run, sharing the trainer's weights."""

    def __init__(self, model: Any, tokenizer: Any, *, label: str = "model in training") -> None:
        if tokenizer is None:
            raise ConfigError(
                "the training callback needs the tokenizer to build chat prompts: pass "
                "FtgateCallback(..., tokenizer=tokenizer) or give the Trainer processing_class=tokenizer"
            )
        peft = model if hasattr(model, "disable_adapter") and hasattr(model, "get_base_model") else None
        if peft is not None and len(getattr(peft, "peft_config", {})) > 1:
            raise ConfigError(
                f"the model in training has {len(peft.peft_config)} adapters ({', '.join(peft.peft_config)}): "
                "the callback gates one LoRA adapter at a time"
            )
        hf = peft.get_base_model() if peft is not None else model
        tokenizer = copy.deepcopy(tokenizer)
        prepare_tokenizer(tokenizer, label, "set tokenizer.chat_template (or train an instruct model)")
        dtype = str(getattr(hf, "dtype", "unknown")).removeprefix("torch.")
        self.loaded = _Loaded(hf, tokenizer, label, str(hf.device), dtype, peft=peft)
        if peft is not None:
            self.loaded.adapters[TUNED] = peft.active_adapter
        self.has_adapter = peft is not None
        self.backend = TransformersBackend()
        self.label = label
        self._run = f"in-memory-{next(_RUNS)}-{id(model):x}"

    def base(self) -> Model:
        """The base: every adapter switched off (or, trained in full, the model before training)."""
        return Model(self.label, f"{self._run}:base", self.backend, self.loaded)

    def tuned(self, step: int) -> Model:
        """The model as it is at ``step``, its adapter on."""
        return Model(
            f"{self.label} @ step {step}", f"{self._run}:step-{step}", self.backend, self.loaded,
            adapter=TUNED if self.has_adapter else None,
        )  # fmt: skip

"""Gates inside training: check the model every N steps, stop a run that forgets.

- ``FtgateCallback`` (``training.hf``): a transformers ``TrainerCallback`` (``Trainer``,
  TRL's ``SFTTrainer``, Unsloth).
- ``gated_mlx_training`` (``training.mlx``): mlx-tune's ``VLMSFTTrainer`` has no callback hook;
  this runs it in chunks of N steps and gates the adapter between chunks.
- ``GateChecks`` (``training.checks``): the check itself, for any other training loop.

Importing this package is cheap: transformers and mlx load only with the module that needs them.
"""

from __future__ import annotations

from typing import Any

from pytest_ftgate.training.checks import CheckResult, GateCheck, GateChecks, GateSpec

__all__ = ["CheckResult", "FtgateCallback", "GateCheck", "GateChecks", "GateSpec", "gated_mlx_training"]


def __getattr__(name: str) -> Any:
    if name == "FtgateCallback":
        from pytest_ftgate.training.hf import FtgateCallback

        return FtgateCallback
    if name == "gated_mlx_training":
        from pytest_ftgate.training.mlx import gated_mlx_training

        return gated_mlx_training
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""``FtgateCallback``: a gate inside a transformers ``Trainer`` run (TRL's ``SFTTrainer`` and
Unsloth's trainers use the same callbacks).

Every ``every`` optimizer steps it evaluates the configured gates on the model being trained
(``checks.GateChecks``: a fixed sample per benchmark, the anytime-valid early stop, base answers
computed once), in eval mode and without gradients, and puts training mode back. Each check:

- is appended to ``callback.curve`` and to the Trainer's log (``state.log_history``, keys
  ``ftgate/<benchmark>/delta|low|high|measured|proven|used`` and ``ftgate/seconds``: its cost);
- when it passes (every gate's measured drop within its margin, none proven to fail), saves the
  model (``save_pretrained``: the LoRA adapter of a peft model) to
  ``output_dir/ftgate-last-passing`` and sets ``callback.last_passing_step``;
- when a gate has failed beyond doubt (``strict=True``: the interval proves the drop beyond
  ``max_drop``; ``strict=False``: the measured drop is beyond it), stops training
  (``control.should_training_stop``) and sets ``callback.stopped_step``.

The base is the model with its adapter switched off (``PeftModel.disable_adapter``); a model
trained in full (no adapter) is evaluated once at train begin, before the first update. One
process only: under distributed training every rank would evaluate on its own.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from pytest_ftgate.backends.in_memory import TrainingModels
from pytest_ftgate.errors import ConfigError
from pytest_ftgate.training.checks import (
    DEFAULT_CHUNK, DEFAULT_SAMPLE, LAST_PASSING, CheckResult, GateChecks, keep_passing,
)  # fmt: skip


class FtgateCallback(TrainerCallback):  # type: ignore[misc]
    """Gate the model every ``every`` steps; stop a run that forgets; keep the last passing model.

    ``gates``: ``{"fpb": {"max_drop": 2.0}}`` or ``[(benchmark, {"max_drop": 2.0, "mode": ...})]``
    (benchmarks by registry name or ``Benchmark`` object). ``sample``: examples per gate (the
    most a check evaluates); ``chunk``: examples per look of the early stop; ``data``: the
    benchmark data folder, as ``Gate(data=...)``. ``tokenizer``: defaults to the Trainer's
    ``processing_class``. ``save_dir``: where the last passing model goes (default
    ``output_dir/ftgate-last-passing``; ``False``: not saved). ``check_at_end``: check the final
    step too when it is not a multiple of ``every``. ``verbose``: print one line per check.
    """

    def __init__(
        self,
        gates: Mapping[Any, Mapping[str, Any]] | Iterable[tuple[Any, Mapping[str, Any]]],
        *,
        every: int = 50,
        sample: int | None = DEFAULT_SAMPLE,
        chunk: int = DEFAULT_CHUNK,
        strict: bool = True,
        confidence: float = 0.95,
        data: str | os.PathLike[str] | None = None,
        tokenizer: Any = None,
        batch_size: int | None = None,
        save_dir: str | os.PathLike[str] | bool | None = None,
        check_at_end: bool = True,
        verbose: bool = True,
    ) -> None:
        if not isinstance(every, int) or every < 1:
            raise ConfigError(f"every={every!r}: pass a positive number of steps between checks")
        self.checks = GateChecks(
            gates, data=data, sample=sample, chunk=chunk, strict=strict, confidence=confidence, batch_size=batch_size
        )
        self.every = every
        self.tokenizer = tokenizer
        self.save_dir = save_dir
        self.check_at_end = check_at_end
        self.verbose = verbose
        self.curve: list[CheckResult] = []
        self.last_passing_step: int | None = None
        self.last_passing_dir: Path | None = None
        self.stopped_step: int | None = None
        self._models: TrainingModels | None = None

    @property
    def seconds(self) -> float:
        """Time spent checking, in total (the first check includes the base's answers)."""
        return sum(result.seconds for result in self.curve)

    # -- Trainer events ------------------------------------------------------------------------

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self._models = TrainingModels(model, self.tokenizer or kwargs.get("processing_class"))
        if not self._models.has_adapter:  # trained in full: the base exists only now
            if state.global_step:
                raise ConfigError(
                    f"FtgateCallback: a model trained in full (no peft adapter) resumes at step {state.global_step}, "
                    "so its base weights are gone: gate a LoRA adapter (the base is the adapter switched off), "
                    "or start the run from the base model"
                )
            with _evaluating(model):
                self.checks.base_answers(self._models.base())

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> Any:
        if state.global_step % self.every == 0:
            self._check(args, state, control, model)
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        checked = self.curve[-1].step if self.curve else None
        if self.check_at_end and self.stopped_step is None and checked != state.global_step and state.global_step:
            self._check(args, state, control, model)

    # -- the check -----------------------------------------------------------------------------

    def _check(self, args: Any, state: Any, control: Any, model: Any) -> None:
        if self._models is None:  # a Trainer always sends on_train_begin first; a hand-driven loop may not
            raise ConfigError("FtgateCallback got a step before on_train_begin: add it to the Trainer's callbacks")
        step = int(state.global_step)
        with _evaluating(model):
            result = self.checks.check(self._models.base(), self._models.tuned(step), step)
        if result.passed and not result.failed:
            self.last_passing_step = step
            self.last_passing_dir = self._save(args, state, model, result) or self.last_passing_dir
        self.curve.append(result)
        state.log_history.append({**result.log_entry(), "step": step})
        if result.failed:
            self.stopped_step = step
            control.should_training_stop = True
        if self.verbose:
            print(result.line(), flush=True)

    def _save(self, args: Any, state: Any, model: Any, result: CheckResult) -> Path | None:
        """Save the passing model (``save_pretrained``: a peft model's adapter) in place of the last."""
        if self.save_dir is False or not getattr(state, "is_world_process_zero", True):
            return None
        chosen = self.save_dir if isinstance(self.save_dir, (str, os.PathLike)) else None
        place = Path(chosen) if chosen is not None else Path(args.output_dir) / LAST_PASSING
        return keep_passing(place, result, model.save_pretrained)


@contextlib.contextmanager
def _evaluating(model: Any) -> Iterator[None]:
    """``model`` in eval mode (dropout off) for the check, back in training mode after."""
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()

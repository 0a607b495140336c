"""The checkpoints an adapter setting names: one adapter folder, a training run's saves, a glob or a list.

``resolve_checkpoints(spec)`` turns ``--ftgate-adapter`` (or ``Gate(adapter=...)``) into an ordered
list of ``Checkpoint(step, path, label)``; the last one is the final adapter. Accepted:

- one adapter folder (or file) as before: one checkpoint (its step from a ``checkpoint-N`` name,
  else None);
- a HF Trainer / TRL / Unsloth output folder: its ``checkpoint-N/`` subfolders (peft adapters);
  adapter files at the top level (``trainer.save_model``) are the final adapter, after the
  highest N, unless they are the same adapter as that checkpoint (then it is listed once);
- an mlx-lm / mlx-tune / mlx-vlm trainer folder (mlx-tune's ``output_dir`` or its ``adapters/``):
  ``adapter_config.json`` + ``adapters.safetensors`` + the step saves
  ``NNNNNNN_adapters.safetensors`` (mlx-vlm's ``sft_trainer`` and mlx-lm's trainer write these
  every ``steps_per_save``). A step save is staged as an adapter folder of its own under
  ``$FTGATE_HOME/checkpoints`` (its config copied, its weights linked as ``adapters.safetensors``),
  so the adapter checks and the backends read it like any adapter. The final adapter identical to
  the last step save is that step (listed once, as the final folder, which can be promoted as is);
- a glob (``out/checkpoint-*``) or a comma-separated list (``runs/a,runs/b``; in Python a list).

Checkpoints with steps are ordered by step as numbers (never as text: step 100 comes after 20);
adapters without steps (a list of separate runs) keep the order given; mixing the two, the same
step twice, the same folder twice, and a glob that matches nothing are errors naming the paths and
the fix. A checkpoint with missing or corrupt files is an error, never skipped: every checkpoint is
inspected (``adapters.inspect_adapter``: files complete, ranks, finite weights) before any model
loads.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pytest_ftgate.adapters import CONFIG, MLX_WEIGHTS, PEFT_WEIGHTS, file_sha256, inspect_adapter
from pytest_ftgate.errors import AdapterError
from pytest_ftgate.fingerprint import digest
from pytest_ftgate.home import ftgate_home

STEP_FOLDER = re.compile(r"^checkpoint-(\d+)$")  # HF Trainer, TRL, Unsloth
STEP_FILE = re.compile(r"^(\d+)_adapters\.safetensors$")  # mlx-lm, mlx-tune, mlx-vlm trainers
_GLOB = set("*?[")
_FIX = "{adapter}"  # named in fixes: --ftgate-adapter for the plugin, adapter= in Python
_STAGED_FILES = (CONFIG, "config.json")  # config.json: mlx-tune's format is told apart by it

AdapterSpec = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


@dataclass(frozen=True)
class Checkpoint:
    """One adapter to evaluate. ``path``: the folder the backends load; ``label``: how reports
    name it (the path the user has, relative to the current folder when below it); ``step``: the
    training step, None when unknown; ``source``: the file or folder the user has (for an mlx
    step save, the ``NNNNNNN_adapters.safetensors`` file; ``path`` is then its staged folder)."""

    step: int | None
    path: Path
    label: str
    source: Path = field(default=None, compare=False)  # type: ignore[assignment]  # default: path

    def __post_init__(self) -> None:
        if self.source is None:
            object.__setattr__(self, "source", self.path)

    @property
    def name(self) -> str:
        """``step 40 (out/checkpoint-40)``, or the label alone when the step is unknown."""
        return self.label if self.step is None else f"step {self.step} ({self.label})"


def shown(path: Path) -> str:
    """``path`` relative to the current folder when it lies below it, else absolute."""
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return str(path)
    return str(path) if relative.startswith("..") else relative


def resolve_checkpoints(spec: AdapterSpec, *, inspect: bool = True) -> list[Checkpoint]:
    """The checkpoints ``spec`` names, in order, the final one last (module docstring). With
    ``inspect`` each is checked with ``inspect_adapter`` (AdapterError naming the checkpoint)."""
    entries = _entries(spec)
    units = [_resolve_entry(entry) for entry in entries]
    checkpoints = _combine(units, ", ".join(entries))
    if inspect:
        for checkpoint in checkpoints:
            try:
                inspect_adapter(checkpoint.path)
            except AdapterError as exc:
                if len(checkpoints) == 1 and checkpoint.source == checkpoint.path:
                    raise
                raise AdapterError(
                    f"checkpoint {checkpoint.name} of {', '.join(entries)} is broken: {exc.message}",
                    fix=exc.fix or f"re-save or delete that checkpoint, or leave it out of {_FIX}",
                ) from None
    return checkpoints


def spec_text(adapter: AdapterSpec | None) -> str | None:
    """The adapter setting as text (reports, ``repr``): a list joined with commas."""
    if adapter is None:
        return None
    if isinstance(adapter, (str, os.PathLike)):
        return os.fspath(adapter)
    return ",".join(os.fspath(part) for part in adapter)


def one_checkpoint(checkpoints: list[Checkpoint], given: object, setting: str) -> Checkpoint:
    """The single checkpoint ``given`` names; AdapterError when it names several."""
    if len(checkpoints) != 1:
        text = os.fspath(given) if isinstance(given, (str, os.PathLike)) else repr(given)
        raise AdapterError(
            f"{setting} {text} names "
            f"{len(checkpoints)} checkpoints ({', '.join(c.label for c in checkpoints[:4])}"
            f"{', ...' if len(checkpoints) > 4 else ''}), where one adapter is needed",
            fix=f"pass one adapter folder as {{{setting}}}, e.g. one checkpoint-N folder",
        )
    return checkpoints[0]



def _entries(spec: AdapterSpec) -> list[str]:
    """The spec's parts: list items, or the comma-separated parts of a text (unless the whole text
    is an existing path)."""
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        parts = [text] if os.path.exists(os.path.expanduser(text)) else text.split(",")
    else:
        parts = [os.fspath(part) for part in spec]
    entries = [part.strip() for part in parts if part.strip()]
    if not entries:
        raise AdapterError(f"no adapter given ({spec!r})", fix=f"pass {_FIX}=DIR (a folder, a glob or a list)")
    return entries


def _resolve_entry(entry: str) -> list[Checkpoint]:
    path = os.path.expanduser(entry)
    if _GLOB & set(entry) and not os.path.exists(path):
        matches = sorted(glob.glob(path), key=_natural)
        if not matches:
            raise AdapterError(
                f"no adapter or checkpoint matches {entry}",
                fix=f"check the pattern given to {_FIX} (e.g. out/checkpoint-*) and that training saved there",
            )
        return _combine([_resolve_path(Path(match)) for match in matches], entry)
    return _resolve_path(Path(path))


def _resolve_path(path: Path) -> list[Checkpoint]:
    if not path.exists():
        raise AdapterError(f"adapter folder {path} does not exist", fix=f"check the path given to {_FIX}")
    if path.is_file() and STEP_FILE.match(path.name):
        return [_mlx_step(path)]
    if path.is_dir():
        steps = sorted(p for p in path.iterdir() if p.is_dir() and STEP_FOLDER.match(p.name))
        if steps:
            return _trainer_run(path, steps)
        for folder in (path, path / "adapters"):
            if folder.is_dir() and any(STEP_FILE.match(p.name) for p in folder.iterdir()):
                return _mlx_run(folder)
    match = STEP_FOLDER.match(path.name)
    return [Checkpoint(int(match.group(1)) if match else None, path, shown(path))]


def _trainer_run(run: Path, folders: list[Path]) -> list[Checkpoint]:
    """A HF Trainer / TRL / Unsloth output folder: ``checkpoint-N/`` by N, then the final adapter."""
    checkpoints = _by_step(
        [Checkpoint(int(STEP_FOLDER.match(f.name).group(1)), f, shown(f)) for f in folders],  # type: ignore[union-attr]
        str(run),
    )
    final = next((run for name in (PEFT_WEIGHTS, MLX_WEIGHTS) if (run / name).is_file()), None)
    if final is None and (run / "adapters" / MLX_WEIGHTS).is_file():
        final = run / "adapters"
    if final is not None and not _same_adapter(final, checkpoints[-1].path):
        checkpoints.append(Checkpoint(None, final, f"{shown(final)} (final)", final))
    return checkpoints


def _mlx_run(folder: Path) -> list[Checkpoint]:
    """An mlx trainer's adapter folder: the step saves by step, then ``adapters.safetensors``."""
    checkpoints = _by_step([_mlx_step(p) for p in sorted(folder.iterdir()) if STEP_FILE.match(p.name)], str(folder))
    if (folder / MLX_WEIGHTS).is_file():
        last = checkpoints[-1]
        if _same_file(folder / MLX_WEIGHTS, last.source):
            checkpoints[-1] = Checkpoint(last.step, folder, shown(folder))  # the final folder, whole
        else:
            checkpoints.append(Checkpoint(None, folder, f"{shown(folder)} (final)"))
    return checkpoints


def _mlx_step(weights: Path) -> Checkpoint:
    step = int(STEP_FILE.match(weights.name).group(1))  # type: ignore[union-attr]
    return Checkpoint(step, stage_step_save(weights), shown(weights), weights)


def stage_step_save(weights: Path) -> Path:
    """An adapter folder for an mlx step save: under ``$FTGATE_HOME/checkpoints``, its folder's
    ``adapter_config.json`` (and ``config.json``) copied and the weights linked (copied where a
    link cannot be made) as ``adapters.safetensors``. Keyed by the file's path, size and mtime
    and the configs' content: the same save is staged once, a changed one again."""
    folder = weights.parent
    if not (folder / CONFIG).is_file():
        raise AdapterError(
            f"{weights} is an mlx step save, but {folder} has no {CONFIG}",
            fix="copy the whole adapter folder the trainer wrote (config and weights together)",
        )
    stat = weights.stat()
    configs = {name: file_sha256(folder / name) for name in _STAGED_FILES if (folder / name).is_file()}
    key = digest([str(weights.resolve()), stat.st_size, stat.st_mtime_ns, configs])[:24]
    dest = ftgate_home() / "checkpoints" / key
    if (dest / MLX_WEIGHTS).is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{key}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for name in configs:
            shutil.copyfile(folder / name, tmp / name)
        try:
            os.link(weights, tmp / MLX_WEIGHTS)
        except OSError:  # another file system, or links not allowed
            shutil.copyfile(weights, tmp / MLX_WEIGHTS)
        try:
            os.rename(tmp, dest)
        except OSError:  # another process staged it first
            if not (dest / MLX_WEIGHTS).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _by_step(checkpoints: list[Checkpoint], where: str) -> list[Checkpoint]:
    """Sorted by step as a number; the same step twice (``checkpoint-10`` and ``checkpoint-010``)
    is ambiguous."""
    ordered = sorted(checkpoints, key=lambda c: c.step)  # type: ignore[arg-type, return-value]
    for before, after in zip(ordered, ordered[1:]):
        if before.step == after.step:
            raise AdapterError(
                f"step {after.step} appears twice in {where}: {before.label} and {after.label}",
                fix=f"remove or rename one of them, or list the checkpoints you mean in {_FIX}",
            )
    return ordered


def _combine(units: list[list[Checkpoint]], where: str) -> list[Checkpoint]:
    """One list from several entries' checkpoints: by step when every one has a step, in the
    given order when none has; mixing them, or a folder twice, is an error."""
    flat = [checkpoint for unit in units for checkpoint in unit]
    seen: dict[Path, Checkpoint] = {}
    for checkpoint in flat:
        key = checkpoint.source.resolve()
        if key in seen:
            raise AdapterError(
                f"{checkpoint.label} is listed twice in {where}", fix=f"name each checkpoint once in {_FIX}"
            )
        seen[key] = checkpoint
    if len(units) == 1:
        return flat
    stepped = [c for c in flat if c.step is not None]
    if len(stepped) == len(flat):
        return _by_step(flat, where)
    if stepped:
        unknown = next(c for c in flat if c.step is None)
        raise AdapterError(
            f"cannot order the checkpoints of {where}: {stepped[0].label} has a step ({stepped[0].step}), "
            f"{unknown.label} has none",
            fix=f"give one training run's checkpoints (checkpoint-N folders or mlx step saves) or separate "
            f"adapters without steps in {_FIX}, not both",
        )
    return flat


def _same_adapter(a: Path, b: Path) -> bool:
    """Whether two adapter folders hold the same weights and config."""
    try:
        one, other = inspect_adapter(a), inspect_adapter(b)
    except AdapterError:
        return False  # reported when each is inspected
    return one.weights.name == other.weights.name and _same_file(one.weights, other.weights) and (
        _same_file(a / CONFIG, b / CONFIG)
    )


def _same_file(a: Path, b: Path) -> bool:
    if not (a.is_file() and b.is_file()) or a.stat().st_size != b.stat().st_size:
        return False
    return file_sha256(a) == file_sha256(b)


def _natural(text: str) -> list[tuple[int, int | str]]:
    """Sort key comparing digit runs as numbers (``run-9`` before ``run-10``)."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", text)]

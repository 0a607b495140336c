"""Custom benchmarks from a JSON Lines file: ``Benchmark.from_jsonl(...)``."""

from __future__ import annotations

import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pytest_ftgate.benchmarks.base import KINDS, Benchmark, Example
from pytest_ftgate.benchmarks.data import (
    Row,
    content_id,
    finish_ids,
    load_rows,
    require,
    require_str,
)
from pytest_ftgate.benchmarks.parsing import gold_number
from pytest_ftgate.errors import ConfigError, DataError

DEFAULT_MAX_TOKENS = {"choice": 200, "label": 8, "numeric": 32, "exact": 64}


def template_fields(template: str, where: str) -> list[str]:
    """The row fields a ``str.format`` template uses ("{question}" -> ["question"])."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"{where}: template {template!r} is not a valid str.format template ({exc}); "
                          "write literal braces as {{ and }}") from None
    fields = []
    for _, field, _, _ in parsed:
        if field is None:
            continue
        base = field.split(".")[0].split("[")[0]
        if not base or base.isdigit():
            raise ConfigError(
                f"{where}: template {template!r} must name row fields, as in '{{question}}'; "
                "positional fields like '{}' or '{0}' are not allowed"
            )
        if base not in fields:
            fields.append(base)
    return fields


class JsonlBenchmark(Benchmark):
    """A benchmark whose examples are the rows of one JSON Lines file.

    - ``template``: a ``str.format`` template over the row's fields, giving the user message.
    - ``answer``: the field that holds the gold answer. For ``kind="choice"`` it must be one of the
      choice letters (``choices=("A", "B", "C", "D")``); for ``"label"`` one of ``choices``.
    - Parsing by ``kind``: choice -> the first standalone choice letter in the upper-cased reply;
      label -> the first of ``choices`` (list order) found in the lower-cased reply; numeric ->
      ConvFinQA's number rule (1% relative error); exact -> the reply's first line, stripped,
      compared case-insensitively.
    - ``max_tokens`` defaults by kind: choice 200, label 8, numeric 32, exact 64 (the built-ins').
    - ``id_field``: the row's id (a hash of the prompt and answer when a row has none).
    - ``stratify``: the field that subsets balance on. None: the gold for choice/label kinds, no
      strata otherwise; "" turns stratification off.
    - ``path``: read at ``load``. A relative path is looked up under ``--ftgate-data DIR`` first
      (when given), then relative to the working directory; from a conftest prefer
      ``Path(__file__).parent / "file.jsonl"``.
    """

    def __init__(
        self,
        name: str,
        path: str | Path,
        *,
        system: str | None,
        template: str,
        answer: str,
        kind: str = "choice",
        choices: Sequence[str] = (),
        max_tokens: int | None = None,
        id_field: str = "id",
        title: str | None = None,
        stratify: str | None = None,
        version: str = "1",
    ) -> None:
        where = f"Benchmark.from_jsonl({name!r})"
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"Benchmark.from_jsonl: name must be a non-empty string, got {name!r}")
        if kind not in KINDS:
            raise ConfigError(f"{where}: kind {kind!r} is not one of {', '.join(KINDS)}")
        if isinstance(choices, str):
            raise ConfigError(f"{where}: choices must be a sequence of strings, e.g. ('A', 'B'), not {choices!r}")
        choices = tuple(choices)
        if kind in ("choice", "label") and not choices:
            example = "('A', 'B', 'C', 'D')" if kind == "choice" else "('yes', 'no')"
            raise ConfigError(f"{where}: kind={kind!r} needs choices, e.g. choices={example}")
        if kind == "choice" and not all(c.strip() and c.strip().isalnum() for c in choices):
            raise ConfigError(f"{where}: choice letters must be letters or words, got {choices!r}")
        if not isinstance(template, str) or not template.strip():
            raise ConfigError(f"{where}: template must be a non-empty str.format template such as '{{question}}'")
        bad_tokens = isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens <= 0
        if max_tokens is not None and bad_tokens:
            raise ConfigError(f"{where}: max_tokens must be a positive integer, got {max_tokens!r}")
        self.fields = template_fields(template, where)
        self.name = name
        self.title = title or name
        self.version = str(version)
        self.kind = kind
        self.system = system
        self.max_tokens = max_tokens or DEFAULT_MAX_TOKENS[kind]
        self.choices = choices
        self.template = template
        self.path = Path(path).expanduser()
        self.answer = answer
        self.id_field = id_field
        self.stratify = stratify

    def identity(self) -> dict[str, Any]:
        identity = super().identity()
        identity.update(answer=self.answer, id_field=self.id_field)
        return identity

    def load_hub(self) -> list[Example]:
        return self._load(self._resolve(None))

    def load_local(self, data_dir: str | Path) -> list[Example]:
        return self._load(self._resolve(data_dir))

    def _resolve(self, data_dir: str | Path | None) -> Path:
        candidates = []
        if data_dir is not None and not self.path.is_absolute():
            candidates.append(Path(data_dir).expanduser() / self.path)
        candidates.append(self.path)
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        looked = ", ".join(str(c) for c in candidates)
        raise DataError(
            f"benchmark {self.name!r}: data file not found (looked for {looked}); pass the path of "
            "an existing JSON Lines file to Benchmark.from_jsonl (absolute, or relative to "
            "--ftgate-data DIR)"
        )

    def _load(self, path: Path) -> list[Example]:
        built: list[tuple[Example, bool, str]] = []
        for lineno, row in load_rows(path):
            built.append(self.build(row, f"{path}:{lineno}"))
        examples = finish_ids(built, str(path))
        if self.kind == "numeric" and not any(gold_number(ex.gold) is not None for ex in examples):
            raise DataError(
                f"{path}: no answer in field {self.answer!r} holds a number; kind='numeric' "
                "needs numeric answers (use kind='exact' for text answers)"
            )
        return examples

    def build(self, row: Row, where: str) -> tuple[Example, bool, str]:
        fix = f"every row needs the fields {', '.join([*self.fields, self.answer])}"
        for field in self.fields:
            require(row, field, where, fix=fix)
        try:
            prompt = self.template.format_map(row)
        except (KeyError, IndexError, AttributeError, ValueError, TypeError) as exc:
            raise DataError(f"{where}: template {self.template!r} cannot be filled from this row ({exc!r})") from None
        gold = self._gold(require_str(row, self.answer, where, fix=fix), where)
        if self.stratify is None:
            stratum = gold if self.kind in ("choice", "label") else ""
        elif self.stratify == "":
            stratum = ""
        else:
            stratum = str(require(row, self.stratify, where, fix=f"stratify={self.stratify!r} names it"))
        raw_id = row.get(self.id_field)
        explicit = raw_id is not None and str(raw_id).strip() != ""
        ident = str(raw_id) if explicit else content_id(self.name, prompt, gold)
        return Example(ident, prompt, gold, prompt.strip(), stratum), explicit, where

    def _gold(self, value: str, where: str) -> str:
        value = value.strip()
        if self.kind == "choice":
            letters = [c.strip().upper() for c in self.choices]
            if value.upper() not in letters:
                raise DataError(
                    f"{where}: answer {value!r} in field {self.answer!r} is not one of the "
                    f"choices {', '.join(letters)}; fix the row or the choices"
                )
            return value.upper()
        if self.kind == "label":
            labels = [c.lower() for c in self.choices]
            if value.lower() not in labels:
                raise DataError(
                    f"{where}: answer {value!r} in field {self.answer!r} is not one of the "
                    f"labels {', '.join(labels)}; fix the row or the choices"
                )
            return value.lower()
        return value

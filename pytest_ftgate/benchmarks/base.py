"""The ``Benchmark`` interface: examples, chat messages, answer parsing, metrics, subsets.

A benchmark is a small object with class-level settings (``name``, ``kind``, ``system``,
``max_tokens``, ``choices`` ...) and a few methods. Subclass it and override ``load_hub`` /
``load_local`` (or ``load`` itself, for examples that come from neither), and where the kind's
default rule does not fit, ``parse`` / ``is_correct``; or build one from a JSON Lines file with
:meth:`Benchmark.from_jsonl` (``JsonlBenchmark``, at the end of this module).

Heavy libraries are imported only where they are used (``datasets`` in ``load_hub``,
``sklearn`` in FPB's ``metrics``).
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pytest_ftgate.benchmarks import parsing
from pytest_ftgate.benchmarks.data import Row, content_id, finish_ids, load_rows, require, require_str
from pytest_ftgate.benchmarks.example import Example
from pytest_ftgate.benchmarks.sampling import stratified_subset
from pytest_ftgate.errors import ConfigError, DataError
from pytest_ftgate.results import Prediction

__all__ = ["KINDS", "Benchmark", "Example", "JsonlBenchmark"]

KINDS = ("choice", "label", "numeric", "exact")
DEFAULT_MAX_TOKENS = {"choice": 200, "label": 8, "numeric": 32, "exact": 64}


class Benchmark:
    """Base class of every benchmark. See the module docstring."""

    name: str = ""
    title: str = ""
    version: str = "1"
    kind: str = "exact"  # "choice" | "label" | "numeric" | "exact"
    system: str | None = None
    max_tokens: int = 64
    choices: tuple[str, ...] = ()  # answer strings for log-prob scoring; parse(choice) gives the answer
    primary_metric: str = "accuracy"
    # How the user message is built from a data row. Informational, but part of the fingerprint:
    # the built-ins build ``Example.prompt`` in ``load``, so the template identifies it.
    template: str = "{prompt}"

    # ----------------------------------------------------------------- prompts
    def messages(self, example: Example) -> list[dict[str, str]]:
        """Chat messages: the system message (when ``system`` is set), then the user prompt."""
        messages = []
        if self.system is not None:
            messages.append({"role": "system", "content": self.system})
        messages.append({"role": "user", "content": example.prompt})
        return messages

    # ----------------------------------------------------------------- data
    def load(self, data_dir: str | Path | None = None) -> list[Example]:
        """All examples: from the Hub when ``data_dir`` is None, else from local files. A benchmark
        whose examples come from elsewhere (a file of its own, a generator) overrides this."""
        if data_dir is None:
            return self.load_hub()
        return self.load_local(data_dir)

    def load_hub(self) -> list[Example]:
        raise DataError(
            f"benchmark {self.name!r} has no Hugging Face hub source", fix="pass {data}=DIR with its local files"
        )

    def load_local(self, data_dir: str | Path) -> list[Example]:
        raise DataError(
            f"benchmark {self.name!r} cannot read local files", fix="leave {data} unset to load it from the hub"
        )

    def select(self, examples: list[Example], limit: int | None, seed: int = 0) -> list[Example]:
        """A seeded, stratified, stable subset; see :func:`sampling.stratified_subset`."""
        return stratified_subset(examples, limit, seed)

    # ----------------------------------------------------------------- scoring
    def parse(self, output: str) -> str | None:
        """The answer in a model reply, by ``kind``; None when there is none (unparsed).

        choice: the first standalone choice letter in the upper-cased reply; label: the first of
        ``choices`` (in list order) found in the lower-cased reply; numeric: the first number
        (commas removed), else "yes"/"no"; exact: the first line, stripped.
        """
        if self.kind == "choice":
            return parsing.first_choice(output, self.choices)
        if self.kind == "label":
            return parsing.first_label(output, self.choices)
        if self.kind == "numeric":
            return parsing.parse_numeric(output)
        return parsing.parse_exact(output)

    def is_correct(self, parsed: str | None, gold: str) -> bool:
        if parsed is None and self.kind != "exact":
            return False
        if self.kind == "choice":
            return parsed == gold.strip().upper()
        if self.kind == "label":
            return parsed == gold.strip().lower()
        if self.kind == "numeric":
            return parsing.numeric_correct(parsed, gold)
        return parsing.exact_correct(parsed, gold)

    def answer_decided(self, text: str) -> bool:
        """Whether a reply that starts with ``text`` has an answer no later token can change, so
        generation may stop (the benchmark's ``max_tokens`` stays the ceiling). The default is
        never: decode to ``max_tokens`` or end of sequence, as the seed did."""
        return False

    @property
    def supports_logprob(self) -> bool:
        """Whether ``logprob`` scoring applies: a fixed set of answers to choose from."""
        return self.kind in ("choice", "label") and bool(self.choices)

    def answer_forms(self) -> dict[str, tuple[str, ...]]:
        """For ``logprob`` scoring: each answer and the reply texts that express it. A reply starts
        right after the chat template's generation prompt, so forms carry no leading space; an
        answer's probability is the sum over its forms (``positive``, ``Positive``, ``POSITIVE``)."""
        forms: dict[str, tuple[str, ...]] = {}
        for choice in self.choices:
            answer = self.parse(choice)
            if answer is None:
                continue
            text = choice.strip()
            forms[answer] = tuple(dict.fromkeys((text, text.capitalize(), text.upper())))
        return forms

    def prediction(self, example: Example, output: str) -> Prediction:
        """Parse and score one reply: the ``Prediction`` a runner stores."""
        parsed = self.parse(output)
        return Prediction(
            id=example.id,
            output=output,
            parsed=parsed,
            gold=example.gold,
            correct=self.is_correct(parsed, example.gold),
            text=example.text,
        )

    def metrics(self, predictions: list[Prediction]) -> dict[str, float]:
        """Points 0-100: ``accuracy`` and ``unparsed_rate`` (replies whose ``parsed`` is None)."""
        n = len(predictions)
        if n == 0:
            return {"accuracy": 0.0, "unparsed_rate": 0.0}
        return {
            "accuracy": 100.0 * sum(p.correct for p in predictions) / n,
            "unparsed_rate": 100.0 * sum(p.parsed is None for p in predictions) / n,
        }

    # ----------------------------------------------------------------- identity
    def parse_rule(self) -> str:
        """A description of the parsing and scoring rule; part of the fingerprint."""
        if self.kind == "choice":
            letters = "|".join(c.strip().upper() for c in self.choices)
            return f"first \\b({letters})\\b in reply.upper(); equal to gold"
        if self.kind == "label":
            labels = ",".join(c.lower() for c in self.choices)
            return f"first of [{labels}] (list order) in reply.lower(); equal to gold"
        if self.kind == "numeric":
            return (
                f"first {parsing.NUMBER_PATTERN} in reply without commas, else yes/no; gold "
                f"without commas and %; rel err < {parsing.RELATIVE_TOLERANCE}, gold 0: "
                f"|pred| < {parsing.ZERO_TOLERANCE}; non-numeric gold: case-insensitive text"
            )
        return "first line of reply, stripped; case-insensitive equality"

    def identity(self) -> dict[str, Any]:
        """Everything that defines prompts, generation and parsing (what the fingerprint hashes)."""
        cls = type(self)
        return {
            "name": self.name,
            "version": self.version,
            "kind": self.kind,
            "system": self.system,
            "max_tokens": self.max_tokens,
            "choices": list(self.choices),
            "primary_metric": self.primary_metric,
            "template": self.template,
            "parse_rule": self.parse_rule(),
            "class": f"{cls.__module__}.{cls.__qualname__}",
        }

    def fingerprint(self) -> str:
        """sha256 hex of :meth:`identity`: changes whenever a stored baseline must not be reused."""
        blob = json.dumps(self.identity(), sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} v{self.version} kind={self.kind}>"

    # ----------------------------------------------------------------- custom
    @staticmethod
    def from_jsonl(name: str, path: str | Path, **options: Any) -> JsonlBenchmark:
        """A benchmark read from a JSON Lines file: ``JsonlBenchmark(name, path, **options)``; the
        options (``system``, ``template``, ``answer``, ``kind`` ...) are documented there."""
        return JsonlBenchmark(name, path, **options)


# ----------------------------------------------------------------- JSON Lines files


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

    def load(self, data_dir: str | Path | None = None) -> list[Example]:
        """The file's rows (``path``, looked up under ``data_dir`` first when it is relative)."""
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
        if self.kind == "numeric" and not any(parsing.gold_number(ex.gold) is not None for ex in examples):
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

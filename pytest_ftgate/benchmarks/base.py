"""The ``Benchmark`` interface: examples, chat messages, answer parsing, metrics, subsets.

A benchmark is a small object with class-level settings (``name``, ``kind``, ``system``,
``max_tokens``, ``choices`` ...) and a few methods. Subclass it and override ``load_hub`` /
``load_local`` (and, where the kind's default rule does not fit, ``parse`` / ``is_correct``), or
build one from a JSON Lines file with :meth:`Benchmark.from_jsonl`.

Heavy libraries are imported only where they are used (``datasets`` in ``load_hub``,
``sklearn`` in FPB's ``metrics``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_ftgate.benchmarks import parsing
from pytest_ftgate.benchmarks.sampling import stratified_subset
from pytest_ftgate.errors import DataError
from pytest_ftgate.results import Prediction

if TYPE_CHECKING:
    from pytest_ftgate.benchmarks.custom import JsonlBenchmark

KINDS = ("choice", "label", "numeric", "exact")


@dataclass(frozen=True)
class Example:
    """One benchmark item.

    ``id`` is stable and unique (the dataset's id, or a hash of the content when it has none);
    ``prompt`` is the user message; ``gold`` is the answer in canonical form ("A".."D",
    "positive"/"negative"/"neutral", or a label string); ``text`` is a short readable form for
    flip reports; ``stratum`` is what stratified subsets balance on; ``source`` says where the
    example came from, for error messages (``"data.jsonl:12"``; set by ``data.finish_ids``, "" when
    unknown; not part of equality).
    """

    id: str
    prompt: str
    gold: str
    text: str = ""
    stratum: str = ""
    source: str = field(default="", compare=False)


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
        """All examples: from the Hub when ``data_dir`` is None, else from local files."""
        if data_dir is None:
            return self.load_hub()
        return self.load_local(data_dir)

    def load_hub(self) -> list[Example]:
        raise DataError(
            f"benchmark {self.name!r} has no Hugging Face Hub source; pass --ftgate-data DIR "
            "with its local files"
        )

    def load_local(self, data_dir: str | Path) -> list[Example]:
        raise DataError(
            f"benchmark {self.name!r} cannot read local files; run without --ftgate-data to "
            "load it from the Hub"
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
    def from_jsonl(
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
    ) -> JsonlBenchmark:
        """A benchmark read from a JSON Lines file; see :class:`custom.JsonlBenchmark`."""
        from pytest_ftgate.benchmarks.custom import JsonlBenchmark

        return JsonlBenchmark(
            name,
            path,
            system=system,
            template=template,
            answer=answer,
            kind=kind,
            choices=choices,
            max_tokens=max_tokens,
            id_field=id_field,
            title=title,
            stratify=stratify,
            version=version,
        )

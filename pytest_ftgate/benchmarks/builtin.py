"""The built-in benchmarks of the seed article: MedMCQA, FPB and ConvFinQA (DESIGN.md section 3).

Prompts, parsing and metrics follow the article to the letter; where it left a case open the
choice is written in the class docstring. Importing this module imports neither ``datasets``
nor ``sklearn``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pytest_ftgate.benchmarks import parsing
from pytest_ftgate.benchmarks.base import Benchmark, Example
from pytest_ftgate.benchmarks.data import (
    Row,
    content_id,
    finish_ids,
    hub_rows,
    load_rows,
    require,
    require_str,
    resolve_local,
)
from pytest_ftgate.errors import DataError
from pytest_ftgate.results import Prediction

_NUMBER = re.compile(parsing.NUMBER_PATTERN)  # the ConvFinQA reply rule's number

# An example built from one row, with whether its id came from the data (else a content hash).
_Built = tuple[Example, bool, str]


def _explicit_id(row: Row) -> str | None:
    value = row.get("id")
    if value is None or isinstance(value, bool) or str(value).strip() == "":
        return None
    return str(value)


# --------------------------------------------------------------------------- MedMCQA
class MedMCQA(Benchmark):
    """MedMCQA validation (4,183 questions), four options, gold letter from ``cop`` 0-3.

    Hub: ``load_dataset("openlifescienceai/medmcqa", split="validation")``.
    Local (``--ftgate-data DIR``): ``DIR/medmcqa/validation.jsonl`` (HF rows as JSON Lines,
    ``cop`` 0-3), ``DIR/validation.jsonl`` when DIR is itself named ``medmcqa``, or a direct path
    to a ``.jsonl`` file. Parsing: the first standalone A-D in the upper-cased reply (so
    "I think A is wrong, B" is A: the seed's rule); no letter -> unparsed and incorrect.
    """

    name = "medmcqa"
    title = "MedMCQA"
    version = "1"
    kind = "choice"
    system = (
        "You are a medical expert. Answer the following multiple-choice question. Respond with "
        "ONLY the letter of the correct answer: A, B, C, or D. Do not explain your reasoning."
    )
    max_tokens = 200
    choices = (" A", " B", " C", " D")
    template = "{question}\n\nA. {opa}\nB. {opb}\nC. {opc}\nD. {opd}"

    LETTERS = ("A", "B", "C", "D")
    OPTION_FIELDS = ("opa", "opb", "opc", "opd")
    HUB = ("openlifescienceai/medmcqa", None, "validation")
    FILES = ("validation.jsonl",)
    HINT = (
        "pass {data}=DIR containing medmcqa/validation.jsonl (Hugging Face "
        "openlifescienceai/medmcqa validation rows as JSON Lines, cop 0-3)"
    )

    def load_hub(self) -> list[Example]:
        repo, config, split = self.HUB
        rows = hub_rows(repo, config, split, offline_hint=self.HINT)
        built = [self.build(row, f"{repo} {split} row {i}") for i, row in enumerate(rows)]
        return finish_ids(built, repo)

    def load_local(self, data_dir: str | Path) -> list[Example]:
        path = resolve_local(data_dir, "medmcqa", self.FILES, hint=self.HINT)
        built = [self.build(row, f"{path}:{lineno}") for lineno, row in load_rows(path)]
        return finish_ids(built, str(path))

    def build(self, row: Row, where: str) -> _Built:
        fix = "MedMCQA rows need question, opa, opb, opc, opd and cop (0-3)"
        question = require_str(row, "question", where, fix=fix)
        options = [require_str(row, field, where, fix=fix) for field in self.OPTION_FIELDS]
        cop = require(row, "cop", where, fix=fix)
        if isinstance(cop, str) and cop.strip().isdigit():
            cop = int(cop)
        if isinstance(cop, bool) or not isinstance(cop, int) or not 0 <= cop <= 3:
            raise DataError(
                f"{where}: cop {cop!r} is outside 0-3; cop is the index of the correct option "
                "(0-3 = A-D, the Hugging Face convention). The original MedMCQA dev.json counts "
                "1-4: subtract 1 from every cop (or use validation.jsonl)"
            )
        gold = self.LETTERS[cop]
        prompt = self.template.format(question=question, opa=options[0], opb=options[1], opc=options[2], opd=options[3])
        ident = _explicit_id(row)
        example = Example(
            id=ident or content_id("medmcqa", question, *options),
            prompt=prompt,
            gold=gold,
            text=question,
            stratum=gold,
        )
        return example, ident is not None, where

    def answer_decided(self, text: str) -> bool:
        """Decided once the first standalone A-D of the upper-cased reply is followed by a
        character: that character is then a non-word one, so ``\\b`` holds whatever comes next,
        and no later text can put a match before it. A letter at the very end is not decided
        ("A" may become "AN"). This also ends a reply that "thinks" first as soon as the seed's
        rule has picked its letter, which is what caps the cost of MedMCQA's 200-token ceiling."""
        upper = text.upper()
        letters = tuple(choice.strip().upper() for choice in self.choices)
        match = parsing._choice_regex(letters).search(upper)
        return match is not None and match.end() < len(upper)


# --------------------------------------------------------------------------- FPB
FPB_PREFIX = "Please tell me the sentiment of the following sentence: "
FPB_LABELS = ("positive", "negative", "neutral")
FPB_INT_LABELS = {0: "negative", 1: "neutral", 2: "positive"}  # HF takala/financial_phrasebank


def fpb_sentence(text: str) -> str:
    """The sentence of an AdaptLLM FPB ``input``: the last "\\n\\n" block, after the prefix
    "Please tell me the sentiment of the following sentence: ", cut at "\\nOptions".

    If the prefix is not in the last block but occurs earlier, the text after its last
    occurrence is used (same result whenever the seed's rule finds the prefix).
    """
    block = text.split("\n\n")[-1]
    if FPB_PREFIX in block:
        block = block.split(FPB_PREFIX)[-1]
    elif FPB_PREFIX in text:
        block = text.split(FPB_PREFIX)[-1]
    return block.split("\nOptions")[0].strip()


class FPB(Benchmark):
    """Financial PhraseBank sentiment: positive / negative / neutral. User message = the sentence.

    Hub: ``load_dataset("AdaptLLM/finance-tasks", "FPB", split="test")`` (970 rows, fields
    ``input``, ``options``, ``gold_index``); the sentence is cut out of ``input`` by
    :func:`fpb_sentence` and gold is ``options[gold_index]`` lower-cased.

    Local (``--ftgate-data DIR``), the first file found of: ``DIR/fpb/test.jsonl`` (AdaptLLM
    rows), ``DIR/fpb/sentences_50agree.jsonl`` (raw Financial PhraseBank rows: ``sentence``,
    ``label`` as "positive"/"negative"/"neutral" or the HF ClassLabel int 0=negative,
    1=neutral, 2=positive); the same names directly in DIR when DIR is named ``fpb``; or a direct
    path to a ``.jsonl`` file. Each row may use either format. Note that the raw 50agree file is
    all 4,846 sentences, not AdaptLLM's 970-row test split (which is not available offline).

    Parsing (the seed's rule): the first of positive, negative, neutral -- in that list order,
    not position in the text -- that occurs in the lower-cased reply; a reply with none of them
    scores as "neutral". Such replies keep ``parsed = None`` so ``unparsed_rate`` counts them;
    :meth:`is_correct` and ``macro_f1`` treat None as "neutral".
    Ids: the row's ``id`` if it has one, else a hash of the sentence (``fpb-<hex>``; the second
    copy of a repeated sentence gets ``#2``).
    """

    name = "fpb"
    title = "FPB"
    version = "1"
    kind = "label"
    system = "You are a financial sentiment analyst. Respond with ONLY one word: positive, negative, or neutral."
    max_tokens = 8
    choices = FPB_LABELS
    template = "{sentence}"

    DEFAULT = "neutral"
    HUB = ("AdaptLLM/finance-tasks", "FPB", "test")
    FILES = ("test.jsonl", "sentences_50agree.jsonl")
    HINT = (
        "pass {data}=DIR containing fpb/test.jsonl (AdaptLLM finance-tasks FPB rows: "
        "input, options, gold_index) or fpb/sentences_50agree.jsonl (Financial PhraseBank rows: "
        "sentence, label)"
    )

    def load_hub(self) -> list[Example]:
        repo, config, split = self.HUB
        rows = hub_rows(repo, config, split, offline_hint=self.HINT)
        built = [self.build(row, f"{repo} {config} {split} row {i}") for i, row in enumerate(rows)]
        return finish_ids(built, f"{repo} {config}")

    def load_local(self, data_dir: str | Path) -> list[Example]:
        path = resolve_local(data_dir, "fpb", self.FILES, hint=self.HINT)
        built = [self.build(row, f"{path}:{lineno}") for lineno, row in load_rows(path)]
        return finish_ids(built, str(path))

    def build(self, row: Row, where: str) -> _Built:
        if "input" in row:
            sentence, gold = self._adaptllm(row, where)
        elif "sentence" in row:
            sentence, gold = self._raw(row, where)
        else:
            present = ", ".join(sorted(row)) or "none"
            raise DataError(
                f"{where}: missing field 'sentence' or 'input' (fields present: {present}); FPB "
                "rows are either Financial PhraseBank rows (sentence, label) or AdaptLLM rows "
                "(input, options, gold_index)"
            )
        ident = _explicit_id(row)
        example = Example(
            id=ident or content_id("fpb", sentence),
            prompt=sentence,
            gold=gold,
            text=sentence,
            stratum=gold,
        )
        return example, ident is not None, where

    def _adaptllm(self, row: Row, where: str) -> tuple[str, str]:
        fix = "AdaptLLM FPB rows need input, options and gold_index"
        text = require_str(row, "input", where, fix=fix)
        options = require(row, "options", where, fix=fix)
        index = require(row, "gold_index", where, fix=fix)
        if not isinstance(options, list) or not options:
            raise DataError(f"{where}: field 'options' must be a non-empty list of labels")
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(options):
            raise DataError(f"{where}: gold_index {index!r} is not an index into options {options!r}")
        gold = self._label(options[index], where, "options[gold_index]")
        sentence = fpb_sentence(text)
        if not sentence:
            raise DataError(
                f"{where}: no sentence found in 'input'; expected its last block to read "
                f"{FPB_PREFIX!r} followed by the sentence"
            )
        return sentence, gold

    def _raw(self, row: Row, where: str) -> tuple[str, str]:
        fix = "Financial PhraseBank rows need sentence and label"
        sentence = require_str(row, "sentence", where, fix=fix).strip()
        label = require(row, "label", where, fix=fix)
        return sentence, self._label(label, where, "label")

    def _label(self, value: Any, where: str, field: str) -> str:
        if isinstance(value, int) and not isinstance(value, bool) and value in FPB_INT_LABELS:
            return FPB_INT_LABELS[value]
        if isinstance(value, str) and value.strip().lower() in FPB_LABELS:
            return value.strip().lower()
        raise DataError(
            f"{where}: {field} {value!r} is not a sentiment label; use positive, negative or "
            "neutral (or 0=negative, 1=neutral, 2=positive)"
        )

    def parse(self, output: str) -> str | None:
        return parsing.first_label(output, FPB_LABELS)

    def answer_decided(self, text: str) -> bool:
        """Decided only once "positive" appears: the rule checks positive, then negative, then
        neutral anywhere in the reply, so a later "positive" would override either of the others."""
        return FPB_LABELS[0] in text.lower()

    def is_correct(self, parsed: str | None, gold: str) -> bool:
        return (parsed or self.DEFAULT) == gold

    def parse_rule(self) -> str:
        return (
            "first of [positive,negative,neutral] (list order) in reply.lower(), "
            "else unparsed scored as neutral; equal to gold"
        )

    def metrics(self, predictions: list[Prediction]) -> dict[str, float]:
        """``accuracy``, ``unparsed_rate`` and ``macro_f1`` (sklearn, macro over the 3 labels)."""
        result = super().metrics(predictions)
        if not predictions:
            result["macro_f1"] = 0.0
            return result
        from sklearn.metrics import f1_score

        golds = [p.gold for p in predictions]
        preds = [p.parsed or self.DEFAULT for p in predictions]
        labels = ["negative", "neutral", "positive"]
        score = f1_score(golds, preds, labels=labels, average="macro", zero_division=0)
        result["macro_f1"] = 100.0 * float(score)
        return result


# --------------------------------------------------------------------------- ConvFinQA
def convfinqa_prompt(
    pre_text: str, table_text: str, post_text: str, turns: Sequence[tuple[str, str]], question: str
) -> str:
    """The user message for a ConvFinQA dev turn (local ``dev_turn.jsonl``).

    Sections joined by a blank line; empty ones, and ones of punctuation only (many ConvFinQA
    ``post_text`` values are a bare "."), are left out::

        <pre_text>

        <table_text: one table row per line, cells joined by " | ">

        <post_text>

        Q: <turn 0 question>
        A: <turn 0 answer>
        Q: <current question>
        A:
    """
    parts = (pre_text, table_text, post_text)
    sections = [part.strip() for part in parts if any(ch.isalnum() for ch in part)]
    dialogue = "".join(f"Q: {q.strip()}\nA: {a.strip()}\n" for q, a in turns)
    dialogue += f"Q: {question.strip()}\nA:"
    return "\n\n".join([*sections, dialogue])


class ConvFinQA(Benchmark):
    """ConvFinQA: conversational numeric QA over financial reports.

    Hub: ``load_dataset("AdaptLLM/finance-tasks", "ConvFinQA", split="test")`` (1,490 rows,
    ``input``, ``label``); the user message is ``input`` as is, gold is ``label``.

    Local (``--ftgate-data DIR``), the first file found of: ``DIR/convfinqa/test.jsonl``
    (AdaptLLM rows: ``input``, ``label``), ``DIR/convfinqa/dev_turn.jsonl`` (one row per dev
    turn: ``id``, ``pre_text``, ``table_text``, ``post_text``, ``cur_dial``, ``answer``, and
    ``conv_id``/``turn_ind``); the same names directly in DIR when DIR is named ``convfinqa``;
    or a direct path to a ``.jsonl`` file. A dev-turn prompt is built by :func:`convfinqa_prompt`:
    the document, then each earlier turn as "Q: ...\\nA: <that turn's ``answer``>" (taken from
    the same file's row for that turn), then "Q: <question>\\nA:". Gold is the row's ``answer``
    string (e.g. "142.4%"; scored as 142.4).

    Scoring (the seed's rule): the first number in the reply (commas removed; sign and decimals
    allowed) against the first number of the gold (commas and % removed); correct when the
    relative error is < 1%, or for gold 0 when |pred| < 0.01. A gold with no number (4 dev
    turns answer "yes"/"no") is kept and scored as case-insensitive text: the reply's first
    number, or else its first standalone yes/no. A file where no gold has a number is an error.
    """

    name = "convfinqa"
    title = "ConvFinQA"
    version = "1"
    kind = "numeric"
    system = "Respond with ONLY the final numerical answer. No units or explanation."
    max_tokens = 32
    choices = ()
    template = (
        "AdaptLLM rows: {input} | dev_turn rows: {pre_text}\\n\\n{table_text}\\n\\n{post_text}"
        "\\n\\n(Q: {q}\\nA: {answer}\\n)*Q: {question}\\nA:"
    )

    HUB = ("AdaptLLM/finance-tasks", "ConvFinQA", "test")
    FILES = ("test.jsonl", "dev_turn.jsonl")
    HINT = (
        "pass {data}=DIR containing convfinqa/test.jsonl (AdaptLLM finance-tasks ConvFinQA "
        "rows: input, label) or convfinqa/dev_turn.jsonl (ConvFinQA dev turns)"
    )

    def load_hub(self) -> list[Example]:
        repo, config, split = self.HUB
        rows = hub_rows(repo, config, split, offline_hint=self.HINT)
        built = [self._adaptllm(row, f"{repo} {config} {split} row {i}") for i, row in enumerate(rows)]
        return self._check_golds(finish_ids(built, f"{repo} {config}"), f"{repo} {config}")

    def load_local(self, data_dir: str | Path) -> list[Example]:
        path = resolve_local(data_dir, "convfinqa", self.FILES, hint=self.HINT)
        rows = load_rows(path)
        answers = self._turn_answers(rows, path)
        built = []
        for lineno, row in rows:
            where = f"{path}:{lineno}"
            if "input" in row:
                built.append(self._adaptllm(row, where))
            else:
                built.append(self._dev_turn(row, where, answers, path))
        return self._check_golds(finish_ids(built, str(path)), str(path))

    def _adaptllm(self, row: Row, where: str) -> _Built:
        fix = "AdaptLLM ConvFinQA rows need input and label"
        text = require_str(row, "input", where, fix=fix)
        gold = require_str(row, "label", where, fix=fix).strip()
        lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
        ident = _explicit_id(row)
        example = Example(
            id=ident or content_id("convfinqa", text),
            prompt=text,
            gold=gold,
            text=lines[-1] if lines else text,
        )
        return example, ident is not None, where

    _DEV_FIX = (
        "ConvFinQA dev-turn rows need id, pre_text, table_text, post_text, cur_dial and answer "
        "(or AdaptLLM rows with input and label)"
    )

    def _turn_key(self, row: Row, where: str) -> tuple[str, int, list[str]]:
        ident = require_str(row, "id", where, fix=self._DEV_FIX)
        dialogue = require(row, "cur_dial", where, fix=self._DEV_FIX)
        if not isinstance(dialogue, list) or not dialogue or not all(isinstance(q, str) for q in dialogue):
            raise DataError(f"{where}: field 'cur_dial' must be a non-empty list of questions")
        conv_id = str(row.get("conv_id") or ident.rsplit("_", 1)[0])
        turn = row.get("turn_ind", len(dialogue) - 1)
        if turn != len(dialogue) - 1:
            raise DataError(
                f"{where}: turn_ind {turn!r} does not match cur_dial, which holds "
                f"{len(dialogue)} questions (turns 0..{len(dialogue) - 1})"
            )
        return conv_id, turn, dialogue

    def _turn_answers(self, rows: list[tuple[int, Row]], path: Path) -> dict[tuple[str, int], str]:
        answers = {}
        for lineno, row in rows:
            if "input" in row:
                continue
            where = f"{path}:{lineno}"
            conv_id, turn, _ = self._turn_key(row, where)
            answers[(conv_id, turn)] = require_str(row, "answer", where, fix=self._DEV_FIX).strip()
        return answers

    def _dev_turn(self, row: Row, where: str, answers: dict[tuple[str, int], str], path: Path) -> _Built:
        conv_id, turn, dialogue = self._turn_key(row, where)
        sections = []
        for field in ("pre_text", "table_text", "post_text"):
            value = require(row, field, where, fix=self._DEV_FIX)
            if not isinstance(value, str):
                raise DataError(f"{where}: field {field!r} must be text, got {type(value).__name__}")
            sections.append(value)
        turns = []
        for earlier in range(turn):
            if (conv_id, earlier) not in answers:
                raise DataError(
                    f"{where}: turn {turn} of conversation {conv_id!r} needs the answer of "
                    f"turn {earlier}, which is not in {path}; keep every turn of a "
                    "conversation in the file"
                )
            turns.append((dialogue[earlier], answers[(conv_id, earlier)]))
        question = dialogue[-1]
        example = Example(
            id=require_str(row, "id", where, fix=self._DEV_FIX),
            prompt=convfinqa_prompt(*sections, turns, question),
            gold=answers[(conv_id, turn)],
            text=question.strip(),
        )
        return example, True, where

    def answer_decided(self, text: str) -> bool:
        """Decided once the first number (commas removed, as the rule does) is followed by a
        character that cannot continue it: not a digit, not a comma (removed, so "1,2" is 12),
        and not a "." at the very end when the number has no decimals yet ("3." may become 3.5).
        With no number yet nothing is decided (a yes/no answer can still be overridden)."""
        flat = text.replace(",", "")
        match = _NUMBER.search(flat)
        if match is None:
            return False
        end = match.end()
        if end >= len(flat):
            return False
        return not (flat[end] == "." and end + 1 == len(flat) and "." not in match.group())

    def _check_golds(self, examples: list[Example], source: str) -> list[Example]:
        if examples and not any(parsing.gold_number(ex.gold) is not None for ex in examples):
            raise DataError(
                f"{source}: no answer holds a number; ConvFinQA golds are numbers such as "
                "'142.4%' or '35.80'. Check that this is a ConvFinQA file"
            )
        return examples

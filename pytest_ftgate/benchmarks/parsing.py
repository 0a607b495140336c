"""Answer extraction and scoring rules, shared by the built-in and custom benchmarks.

These are the seed article's rules (DESIGN.md section 3). They are deliberately simple and are
part of every benchmark's fingerprint: change one and bump the benchmark ``version``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

# A number: optional sign, digits with optional decimals, or a bare decimal such as ".0751"
# (ConvFinQA golds contain those). Commas are removed before matching, so "1,234.5" -> 1234.5.
NUMBER_PATTERN = r"[-+]?(?:\d+(?:\.\d+)?|\.\d+)"
_NUMBER = re.compile(NUMBER_PATTERN)
_YES_NO = re.compile(r"\b(yes|no)\b")

RELATIVE_TOLERANCE = 0.01  # relative error must be < 1%
ZERO_TOLERANCE = 0.01  # gold 0: |pred| must be < 0.01


@lru_cache(maxsize=64)
def _choice_regex(letters: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile(r"\b(" + "|".join(re.escape(letter) for letter in letters) + r")\b")


def first_choice(reply: str, letters: Sequence[str]) -> str | None:
    """The first standalone choice letter in the upper-cased reply, or None.

    MedMCQA's rule is ``re.search(r"\\b([ABCD])\\b", reply.upper())``: the first *standalone*
    letter wins, wherever it is. "ANSWER" and "Apple" contain no standalone A; "b." gives B;
    "Let me think... The answer is B" gives B; but "I think A is wrong, B" gives A.
    """
    letters = tuple(letter.strip().upper() for letter in letters)
    match = _choice_regex(letters).search(reply.upper())
    return match.group(1) if match else None


def first_label(reply: str, labels: Sequence[str]) -> str | None:
    """The first label, in the order of ``labels``, that occurs anywhere in the lower-cased reply.

    This is a list-order check (``for label in labels: if label in reply.lower()``), not
    "earliest in the text": with FPB's order "Negative, not positive" gives "positive".
    Substring match, so "not negative" gives "negative".
    """
    text = reply.lower()
    for label in labels:
        if label.lower() in text:
            return label.lower()
    return None


def first_number(text: str) -> float | None:
    """The first number in ``text`` after removing commas (sign and decimals allowed), or None."""
    match = _NUMBER.search(text.replace(",", ""))
    return float(match.group()) if match else None


def gold_number(gold: str) -> float | None:
    """The first number in a gold label after removing commas and ``%`` ("142.4%" -> 142.4)."""
    return first_number(gold.replace("%", ""))


def parse_numeric(reply: str) -> str | None:
    """ConvFinQA's reply rule: the first number (commas removed) as a string, e.g. "-1234.5".

    When the reply holds no number, a standalone "yes"/"no" is returned (lower-cased) so the few
    yes/no golds (4 of 1,490 ConvFinQA dev turns) can be scored; otherwise None (unparsed).
    """
    match = _NUMBER.search(reply.replace(",", ""))
    if match:
        return match.group()
    word = _YES_NO.search(reply.lower())
    return word.group(1) if word else None


def numbers_match(pred: float, gold: float) -> bool:
    """Relative error < 1%; for gold 0, ``|pred| < 0.01``."""
    if gold == 0:
        return abs(pred) < ZERO_TOLERANCE
    return abs(pred - gold) / abs(gold) < RELATIVE_TOLERANCE


def numeric_correct(parsed: str | None, gold: str) -> bool:
    """Score a :func:`parse_numeric` result against a gold label.

    A gold with a number is compared numerically (:func:`numbers_match`). A gold without any
    number (ConvFinQA's "yes"/"no") is compared as stripped, case-insensitive text.
    """
    if parsed is None:
        return False
    gold_value = gold_number(gold)
    if gold_value is None:
        return parsed.strip().lower() == gold.strip().lower()
    pred_value = first_number(parsed)
    return pred_value is not None and numbers_match(pred_value, gold_value)


def parse_exact(reply: str) -> str | None:
    """The reply's first non-empty line, stripped (None for an empty reply)."""
    for line in reply.strip().splitlines():
        if line.strip():
            return line.strip()
    return None


def exact_correct(parsed: str | None, gold: str) -> bool:
    """Stripped, case-insensitive equality."""
    return parsed is not None and parsed.strip().casefold() == gold.strip().casefold()

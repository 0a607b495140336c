"""What the prefill computes: prompt slots run through the model under ftgate's prefix plan, on the
seed gate's real prompts, against the floor (each distinct token prefix once) and against plans
that share less. A CPU script: no GPU, no model weights (token ids only), so it shows on any
machine what the GPU's prefill is made of.

Columns, per benchmark (the seed's full sizes: MedMCQA 499, FPB 970, ConvFinQA 1,490):

- ``tokens``: the prompts' tokens; ``floor``: distinct token prefixes (a token shared by several
  prompts, at the same place after the same tokens, counted once): what a perfect prefix cache
  computes;
- ``no sharing``: one left-padded pass per batch (rows x longest);
- ``one level``: ``prefix.prefix_plan`` limited to one prefix pass (``MAX_DEPTH = 1``): each row
  takes its shared prefix from a head, the heads run padded and share nothing among themselves;
- ``planned``: the plan as the backends run it (prefix passes below one another, ``MAX_DEPTH``).

Batches are cut as the transformers backend cuts them (``prefix.plan_batches``), sized for the GPU
(``torch_graphs.row_bytes`` of a Gemma 4 E4B-shaped model built on the meta device, with
``--free-gb`` of free memory and the backend's prefill share) or for the CPU (16k tokens, 16 rows).
Token ids come from SmolLM2's tokenizer and chat template (``.h200/tokenizer`` or the embedded
model's folder), the data from ``--data`` (default ../shared/data).

``--time K``: also the CPU seconds of the transformers backend (SmolLM2-135M, this machine)
generating ConvFinQA's turns on the first ``K`` documents (every conversation on them, as the full
gate has them), one level against planned, same process, alternating.

    python benchmarks/prefill_plan.py [--free-gb 120] [--time 12]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from pytest_ftgate.backends import prefix  # noqa: E402

SIZES = {"medmcqa": 499, "fpb": 970, "convfinqa": 1490}


def floor(ids: list[list[int]]) -> int:
    """Distinct token prefixes: in sorted order each prompt adds what it does not share with the
    one before."""
    rows = sorted(ids)
    return sum(len(b) - (prefix.common_length(a, b) if a else 0) for a, b in zip([[], *rows[:-1]], rows, strict=True))


def slots(ids: list[list[int]], plan: Any, memo: list[Any] | None = None, depth: int = 0) -> int:
    """Slots the passes of ``plan`` compute, padding included (one padded pass without a plan).
    ``memo``: each level's last single prefix (the transformers backend keeps its keys and
    values, ``torch_graphs.prefix_states``): a prefix pass that runs it again costs nothing."""
    width = max(map(len, ids))
    if plan is None:
        return len(ids) * width
    main = len(ids) * (width - plan.start)
    if memo is not None:  # as the backend keeps it: a level's one prefix (the system prompt)
        memo += [None] * (depth + 1 - len(memo))
        if memo[depth] == plan.prefixes:
            return main
        memo[depth] = plan.prefixes if len(plan.prefixes) == 1 else None
    return main + slots(plan.prefixes, plan.sub, memo, depth + 1)


def planned(ids: list[list[int]], batches: list[list[int]], depth: int, pass_cost: int) -> int:
    """Slots of every batch's plan, one call's memo of prefix passes across batches."""
    saved, prefix.MAX_DEPTH = prefix.MAX_DEPTH, depth
    memo: list[Any] = []
    try:
        plans = ((rows, prefix.prefix_plan(rows, pass_cost)) for rows in ([ids[i] for i in b] for b in batches))
        return sum(slots(rows, plan, memo) for rows, plan in plans)
    finally:
        prefix.MAX_DEPTH = saved


def gpu_rows(free_gb: float) -> Callable[[int], int]:
    import torch
    from transformers import Gemma4ForCausalLM

    import gpu_gemma4_e4b as g
    from pytest_ftgate.backends.torch_graphs import row_bytes
    from pytest_ftgate.backends.transformers import GPU_MAX_ROWS, PREFILL_SHARE

    with torch.device("meta"):
        model = Gemma4ForCausalLM._from_config(g.e4b_config(False), dtype=torch.bfloat16)
    free = free_gb * 2**30
    return lambda length: max(1, min(GPU_MAX_ROWS, int(free * PREFILL_SHARE) // row_bytes(model, length)))


def cpu_rows(length: int) -> int:
    from pytest_ftgate.backends.transformers import CPU_MAX_ROWS, CPU_TOKENS_PER_BATCH

    return max(1, min(CPU_MAX_ROWS, CPU_TOKENS_PER_BATCH // max(length, 1)))


def tokenizer_dir() -> Path:
    local = REPO / ".h200" / "tokenizer"
    if local.is_dir():
        return local
    from pytest_ftgate.embedded import prepare_default_model

    return prepare_default_model()


def by_documents(examples: list[Any], count: int) -> list[Any]:
    """Every turn of every conversation on the first ``count`` documents (ConvFinQA ids:
    ``Single_DOC-N_T`` / ``Double_DOC_T``)."""
    documents: dict[str, list[Any]] = {}
    for example in examples:
        conversation = example.id.rsplit("_", 1)[0]
        documents.setdefault(conversation.split("_", 1)[1].rsplit("-", 1)[0], []).append(example)
    return [e for document in list(documents)[:count] for e in documents[document]]


def timed(count: int, data: str) -> None:
    import resource

    from pytest_ftgate.backends.transformers import TransformersBackend
    from pytest_ftgate.benchmarks import get_benchmark
    from pytest_ftgate.embedded import prepare_default_model

    bench = get_benchmark("convfinqa")
    chosen = by_documents(bench.load(data), count)
    prompts = [bench.messages(e) for e in chosen]
    backend = TransformersBackend()
    model = backend.load(str(prepare_default_model()))
    replies: dict[int, list[str]] = {}
    for depth in (1, prefix.MAX_DEPTH, 1, prefix.MAX_DEPTH):
        saved, prefix.MAX_DEPTH = prefix.MAX_DEPTH, depth
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        wall = time.perf_counter()
        try:
            out = backend.generate(model, prompts, max_tokens=bench.max_tokens, batch_size=None, stop=bench.answer_decided)
        finally:
            prefix.MAX_DEPTH = saved
        after = resource.getrusage(resource.RUSAGE_SELF)
        seconds = after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime
        replies.setdefault(depth, out)
        print(json.dumps({"phase": "time", "depth": depth, "turns": len(prompts), "cpu_s": round(seconds, 1),
                          "wall_s": round(time.perf_counter() - wall, 1), "same_replies": out == replies[depth]}))  # fmt: skip
    print(json.dumps({"phase": "time", "replies_equal_across_depths": replies[1] == replies[prefix.MAX_DEPTH]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--free-gb", type=float, default=120.0, help="free GPU memory the batch sizes assume")
    parser.add_argument("--time", type=int, default=0, help="also time ConvFinQA on this many documents (CPU)")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from pytest_ftgate.benchmarks import get_benchmark

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir()))
    sizing = {"gpu": gpu_rows(args.free_gb), "cpu": cpu_rows}
    print("| benchmark | batches for | tokens | floor | no sharing | one level | planned | planned / floor |")
    print("|---|---|---|---|---|---|---|---|")
    for name, size in SIZES.items():
        bench = get_benchmark(name)
        chosen = bench.select(bench.load(args.data), size)
        texts = [tokenizer.apply_chat_template(bench.messages(e), add_generation_prompt=True, tokenize=False) for e in chosen]
        ids = [list(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]
        least = floor(ids)
        for label, rows_for in sizing.items():
            batches = prefix.plan_batches(ids, bench.max_tokens, rows_for)
            flat = sum(len(b) * max(len(ids[i]) for i in b) for b in batches)
            cost = prefix.PASS_COST_GPU if label == "gpu" else prefix.PASS_COST_CPU
            one, deep = planned(ids, batches, 1, cost), planned(ids, batches, prefix.MAX_DEPTH, cost)
            print(f"| {name} | {label} ({len(batches)}) | {sum(map(len, ids)):,} | {least:,} | {flat:,} | {one:,} | "
                  f"{deep:,} | {deep / least:.2f} |")  # fmt: skip
    if args.time:
        timed(args.time, args.data)


if __name__ == "__main__":
    main()

"""Decode batches refilled from the queue, against decode batches that run until their last row
ends: decode steps, row-steps computed and tokens kept, on a real model's real replies.

A GPU's decode step costs about the same for any number of rows up to hundreds (it is bound by
kernel launches and weight reads), so the steps a run takes are what its decode time follows;
the row-steps are the work, the tokens are what it keeps. This script counts them on this
machine's CPU with the transformers backend's static decoder forced (``static_decode=True``: the
GPU's code path, its steps run eagerly), SmolLM2-135M-Instruct (the embedded model), the
benchmarks' stop rules, and the decode-batch sizes the backend picks here. With
``refill=False`` the queue is never consulted mid-batch (``QueueRefill.fits`` patched to
False): that is the code before the refill. Replies must be identical.

    python benchmarks/decode_refill.py [--medmcqa 64] [--documents 8] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def counted(backend: Any, model: Any, bench: Any, prompts: list[Any], refill: bool) -> dict[str, Any]:
    from pytest_ftgate.backends import torch_decode, torch_graphs

    counts = {"steps": 0, "row_steps": 0, "batches": 0}
    step, fits, init = torch_graphs.StaticDecoder._step, torch_decode.QueueRefill.fits, torch_graphs.StaticDecoder.__init__

    def counting_step(self: Any) -> None:
        counts["steps"] += 1
        counts["row_steps"] += int(self.seen.shape[0])
        step(self)

    def counting_init(self: Any, *args: Any, **kwargs: Any) -> None:
        counts["batches"] += 1
        init(self, *args, **kwargs)

    torch_graphs.StaticDecoder._step = counting_step  # type: ignore[method-assign]
    torch_graphs.StaticDecoder.__init__ = counting_init  # type: ignore[method-assign]
    if not refill:
        torch_decode.QueueRefill.fits = lambda self, width, running: False  # type: ignore[method-assign]
    try:
        start = time.perf_counter()
        replies = backend.generate(model, prompts, max_tokens=bench.max_tokens, batch_size=None, stop=bench.answer_decided)
        seconds = time.perf_counter() - start
    finally:
        torch_graphs.StaticDecoder._step = step  # type: ignore[method-assign]
        torch_graphs.StaticDecoder.__init__ = init  # type: ignore[method-assign]
        torch_decode.QueueRefill.fits = fits  # type: ignore[method-assign]
    tokens = sum(len(model.handle.tokenizer(r, add_special_tokens=False)["input_ids"]) for r in replies)
    return {"refill": refill, **counts, "reply_tokens": tokens, "wall_s": round(seconds, 1), "replies": replies}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--medmcqa", type=int, default=64, help="MedMCQA examples (stratified)")
    parser.add_argument("--documents", type=int, default=8, help="ConvFinQA documents (every turn on them)")
    args = parser.parse_args()

    from prefill_plan import by_documents

    from pytest_ftgate.backends.transformers import TransformersBackend
    from pytest_ftgate.benchmarks import get_benchmark
    from pytest_ftgate.embedded import prepare_default_model

    backend = TransformersBackend(static_decode=True)
    model = backend.load(str(prepare_default_model()))
    medmcqa, convfinqa = get_benchmark("medmcqa"), get_benchmark("convfinqa")
    work = {
        "medmcqa": (medmcqa, medmcqa.select(medmcqa.load(args.data), args.medmcqa)),
        "convfinqa": (convfinqa, by_documents(convfinqa.load(args.data), args.documents)),
    }
    print("| benchmark | prompts | decode | decode batches | steps | row-steps | reply tokens | wall (CPU) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (bench, chosen) in work.items():
        prompts = [bench.messages(e) for e in chosen]
        runs = [counted(backend, model, bench, prompts, refill) for refill in (False, True)]
        for run in runs:
            label = "refilled" if run["refill"] else "until the last row"
            print(f"| {name} | {len(prompts)} | {label} | {run['batches']} | {run['steps']} | {run['row_steps']:,} | "
                  f"{run['reply_tokens']:,} | {run['wall_s']} s |")  # fmt: skip
        print(json.dumps({"benchmark": name, "replies_identical": runs[0]["replies"] == runs[1]["replies"],
                          "steps_ratio": round(runs[0]["steps"] / max(runs[1]["steps"], 1), 2)}))  # fmt: skip


if __name__ == "__main__":
    main()

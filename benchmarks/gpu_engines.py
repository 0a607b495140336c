"""ftgate against the engines a user could pick instead, on one GPU, same model, adapter, prompts.

The model, adapter and examples are ``gpu_gemma4_e4b.py``'s (random-weight Gemma 4 E4B shape,
rank-16 LoRA on every projection, the seed's full sizes, worst-case lengths). Engines, each on
the tuned side (base + adapter active), generate mode:

- ``ftgate``: ``runner.evaluate`` (the transformers backend: prefix plan, static-cache decoder
  replayed from CUDA graphs); also the base side, so "both sides from scratch" is measured;
- ``hf-static``: transformers' own ``generate`` with ``cache_implementation="static"`` (which
  compiles the decode step), on length-sorted left-padded batches (NOTES.md's sizes);
- ``hf-cb``: transformers' continuous batching (``generate_batch``: paged attention, packed
  prefill, decode rows refilled from the queue, block sharing), on the same token ids;
- ``lm-eval``: lm-evaluation-harness's ``HFLM`` (``batch_size="auto"``) ``generate_until`` on the
  same chat-templated prompts, with ``max_gen_toks`` = the benchmark's ``max_tokens``.

Library engines run on the first ``--subset`` examples of each benchmark (their full runs would
take most of a device session); ftgate runs on the same subsets too, so every ratio comes from
the same run and the same work, and on the full sets. Prints JSON lines; ``--tiny`` is a CPU dry
run on a tiny config.

    python3 benchmarks/gpu_engines.py --root .h200 [--subset 256] [--skip hf-cb,lm-eval]
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_gemma4_e4b as g  # noqa: E402  (the shared model, adapter and examples)


def templated(tuned: Any, bench: Any, chosen: list[Any]) -> list[str]:
    backend, handle = tuned.backend, tuned.handle
    return [backend._prompt(handle, bench.messages(e)) for e in chosen]


def run_ftgate(model: Any, bench: Any, chosen: list[Any], device: str) -> tuple[float, list[str]]:
    from pytest_ftgate.cache import PredictionCache
    from pytest_ftgate.runner import evaluate

    g.sync(device)
    start = time.perf_counter()
    result = evaluate(bench, chosen, model, cache=PredictionCache(None), mode="generate")
    g.sync(device)
    return time.perf_counter() - start, [p.output for p in result.predictions]


def run_together(base: Any, tuned: Any, bench: Any, chosen: list[Any], device: str) -> float:
    """Both sides from scratch in one pass (``runner.evaluate_sides``, as ``Gate.compare`` runs
    them without a stored baseline)."""
    from pytest_ftgate.cache import PredictionCache
    from pytest_ftgate.runner import evaluate_sides

    g.sync(device)
    start = time.perf_counter()
    evaluate_sides(bench, chosen, [base, tuned], cache=PredictionCache(None), mode="generate")
    g.sync(device)
    return time.perf_counter() - start


def run_logprob(tuned: Any, bench: Any, chosen: list[Any], device: str) -> float:
    from pytest_ftgate.cache import PredictionCache
    from pytest_ftgate.runner import evaluate

    g.sync(device)
    start = time.perf_counter()
    evaluate(bench, chosen, tuned, cache=PredictionCache(None), mode="logprob")
    g.sync(device)
    return time.perf_counter() - start


def run_hf_static(tuned: Any, bench: Any, chosen: list[Any], device: str, size: int) -> dict[str, Any]:
    """``generate`` on a static cache (compiled decode); the first batch pays the compilation."""
    import torch

    handle = tuned.handle
    texts = sorted(templated(tuned, bench, chosen), key=len)
    seconds: list[float] = []
    with tuned.backend._active(tuned), torch.inference_mode():
        for begin in range(0, len(texts), size):
            inputs = handle.tokenizer(
                texts[begin : begin + size], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(device)
            g.sync(device)
            start = time.perf_counter()
            handle.model.generate(
                **inputs,
                max_new_tokens=bench.max_tokens,
                do_sample=False,
                cache_implementation="static",
                pad_token_id=handle.tokenizer.pad_token_id,
            )
            g.sync(device)
            seconds.append(time.perf_counter() - start)
    return {"seconds": round(sum(seconds), 2), "first_batch_s": round(seconds[0], 2), "batches": len(seconds)}


def run_hf_cb(tuned: Any, bench: Any, chosen: list[Any], device: str) -> dict[str, Any]:
    import torch
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    handle = tuned.handle
    backend = tuned.backend
    ids = [backend._ids(handle, text) for text in templated(tuned, bench, chosen)]
    config = GenerationConfig(max_new_tokens=bench.max_tokens, do_sample=False, eos_token_id=1, pad_token_id=0)
    with backend._active(tuned), torch.inference_mode():
        g.sync(device)
        start = time.perf_counter()
        out = handle.model.generate_batch(
            ids, generation_config=config, continuous_batching_config=ContinuousBatchingConfig()
        )
        g.sync(device)
    failed = sum(1 for r in out.values() if r.error is not None) + len(ids) - len(out)
    return {"seconds": round(time.perf_counter() - start, 2), "failed_requests": failed}


def run_lm_eval(tuned: Any, bench: Any, chosen: list[Any], device: str) -> dict[str, Any]:
    """``HFLM.generate_until``; ``batch_size="auto"`` as users run it (on a CPU dry run: 4)."""
    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    handle = tuned.handle
    lm = HFLM(
        pretrained=handle.model, tokenizer=handle.tokenizer, batch_size="auto" if device == "cuda" else 4, max_length=4096
    )
    kwargs = {"until": [], "max_gen_toks": bench.max_tokens, "do_sample": False}
    requests = [
        Instance(request_type="generate_until", doc={}, arguments=(text, dict(kwargs)), idx=0)
        for text in templated(tuned, bench, chosen)
    ]
    with tuned.backend._active(tuned), torch.inference_mode():
        g.sync(device)
        start = time.perf_counter()
        lm.generate_until(requests, disable_tqdm=True)
        g.sync(device)
    return {"seconds": round(time.perf_counter() - start, 2), "batch_size": lm.batch_size}


def prefill_profile(tuned: Any, bench: Any, chosen: list[Any], rows: int) -> None:
    """The top GPU kernels of one ConvFinQA prefill batch (what the prefill's time is made of)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    backend, handle = tuned.backend, tuned.handle
    ids = sorted((backend._ids(handle, text) for text in templated(tuned, bench, chosen)), key=len)
    batch = ids[len(ids) // 2 : len(ids) // 2 + rows]
    with backend._active(tuned), torch.inference_mode():
        backend._prefill(handle, batch)  # warm
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            start = time.perf_counter()
            backend._prefill(handle, batch)
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
    events = sorted(prof.key_averages(), key=lambda e: -e.device_time_total)[:12]
    g.log(
        {
            "phase": "prefill-profile",
            "rows": len(batch),
            "tokens": sum(len(r) for r in batch),
            "padded": len(batch) * max(len(r) for r in batch),
            "seconds": round(seconds, 3),
            "kernels_ms": {e.key[:70]: round(e.device_time_total / 1000, 1) for e in events},
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=".h200")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--subset", type=int, default=256, help="examples per benchmark for library engines")
    parser.add_argument("--skip", default="", help="engines/phases to skip: full,base,together,logprob,hf-static,hf-cb,lm-eval,profile")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    import torch
    import transformers

    g.log({"phase": "env", "torch": torch.__version__, "transformers": transformers.__version__})
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backend, base, tuned, device = g.build(args)
    data = g.examples(args)
    run_ftgate(tuned, data["fpb"][0], data["fpb"][1][:8], device)  # warm-up
    if "full" not in skip:
        totals = {"tuned": 0.0, "base": 0.0}
        for side, model in (("tuned", tuned), ("base", base)):
            if side == "base" and "base" in skip:
                continue
            for name, (bench, chosen) in data.items():
                g.peak_reset(device)
                seconds, _ = run_ftgate(model, bench, chosen, device)
                totals[side] += seconds
                g.log({"phase": "ftgate-full", "side": side, "benchmark": name, "n": len(chosen),
                       "seconds": round(seconds, 2), "peak_gb": round(g.peak_gb(device), 1)})  # fmt: skip
        g.log({"phase": "ftgate-full-total", **{k: round(v, 1) for k, v in totals.items()},
               "both": round(sum(totals.values()), 1)})  # fmt: skip
    if "together" not in skip:
        together = 0.0
        for name, (bench, chosen) in data.items():
            g.peak_reset(device)
            seconds = run_together(base, tuned, bench, chosen, device)
            together += seconds
            g.log({"phase": "ftgate-together", "benchmark": name, "n": len(chosen), "seconds": round(seconds, 2),
                   "peak_gb": round(g.peak_gb(device), 1)})  # fmt: skip
        g.log({"phase": "ftgate-together-total", "both": round(together, 1)})
    if "logprob" not in skip:
        for name, (bench, chosen) in data.items():
            if bench.supports_logprob:
                seconds = run_logprob(tuned, bench, chosen, device)
                g.log({"phase": "ftgate-logprob", "benchmark": name, "n": len(chosen), "seconds": round(seconds, 2)})
    engines = {
        "hf-static": lambda b, c: run_hf_static(tuned, b, c, device, g.NAIVE_BATCH[b.name]),
        "hf-cb": lambda b, c: run_hf_cb(tuned, b, c, device),
        "lm-eval": lambda b, c: run_lm_eval(tuned, b, c, device),
    }
    for name, (bench, chosen) in data.items():
        if not any(engine not in skip for engine in engines):
            break
        subset = chosen[: args.subset]
        ours, _ = run_ftgate(tuned, bench, subset, device)
        g.log({"phase": "subset", "engine": "ftgate", "benchmark": name, "n": len(subset), "seconds": round(ours, 2)})
        for engine, run in engines.items():
            if engine in skip:
                continue
            g.peak_reset(device)
            try:
                figures = run(bench, subset)
            except Exception as exc:  # a library engine that cannot run this model: say why, go on
                figures = {"error": f"{type(exc).__name__}: {exc}"[:400], "where": traceback.format_exc()[-600:]}
            if "seconds" in figures:
                figures["x_ftgate"] = round(figures["seconds"] / ours, 2)
            g.log({"phase": "subset", "engine": engine, "benchmark": name, "n": len(subset),
                   "peak_gb": round(g.peak_gb(device), 1), **figures})  # fmt: skip
    if "profile" not in skip and device == "cuda":
        bench, chosen = data["convfinqa"]
        prefill_profile(tuned, bench, chosen, 128)


if __name__ == "__main__":
    main()

"""The tuned side of the seed gate on one GPU: a random-weight model of Gemma 4 E4B's shape
(transformers, bf16) plus a random rank-16 LoRA adapter (peft), through ftgate's transformers
backend, at the seed's full sizes (MedMCQA 499, FPB 970, ConvFinQA 1,490 = 2,959 examples).

Not a timed test: a script for the device machine that prints JSON lines and a summary. Random
weights never answer, so stop rules hardly ever fire: generate mode runs at worst-case lengths
(every sequence to max_tokens; the generated token counts are reported to show it).

Measured, each with its peak GPU memory:
- ``matmul``: the bf16 matrix rate (8192^3 products), the ceiling for the compute floor;
- ``seed``: the seed's loop (one ``model.generate`` per example) on a sample, extrapolated;
- ``naive``: ``model.generate`` on left-padded batches (sizes as in ../shared/NOTES.md), on a sample;
- ``ftgate``: ``runner.evaluate`` on every example, generate mode, then logprob (MedMCQA + FPB).
The compute floor is 2 x (matrix parameters a token passes through) x tokens / matrix rate, from
the actual prompt and reply lengths; Gemma 4's KV-shared layers see only the last prompt position
(transformers skips them for the rest when ``logits_to_keep=1``), which the floor accounts for.

Inputs (copy them into an ignored folder that the device run carries)::

    .h200/data/{fpb/sentences_50agree.jsonl, medmcqa/validation.jsonl, convfinqa/dev_turn.jsonl}
    .h200/tokenizer/  (SmolLM2's tokenizer and chat template: real English token counts)

    python benchmarks/gpu_gemma4_e4b.py --root .h200            # on the GPU
    python benchmarks/gpu_gemma4_e4b.py --root .h200 --tiny     # a CPU dry run on a tiny config

On the device machine, with the transformers / peft wheels carried in ``.whl``::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
    python3 benchmarks/gpu_gemma4_e4b.py --root .h200 --skip seed,naive
    FTGATE_CUDA_GRAPHS=0 python3 benchmarks/gpu_gemma4_e4b.py --root .h200 --skip seed,naive,logprob

``FTGATE_CUDA_GRAPHS=0`` turns the backend's CUDA-graph decode off (the dynamic-cache loop).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SIZES = {"medmcqa": 499, "fpb": 970, "convfinqa": 1490}
NAIVE_BATCH = {"fpb": 512, "medmcqa": 256, "convfinqa": 128}  # the batch sizes of NOTES.md's table
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def e4b_config(tiny: bool) -> Any:
    from transformers import Gemma4TextConfig

    layers = 8 if tiny else 42
    every = 3 if tiny else 6  # a full-attention layer after every five sliding ones (tiny: two)
    return Gemma4TextConfig(
        vocab_size=262144 if not tiny else 60000,  # beyond the tokenizer's 49,152: ids it cannot decode
        hidden_size=64 if tiny else 2560,
        intermediate_size=128 if tiny else 10240,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=16 if tiny else 256,
        global_head_dim=32 if tiny else 512,
        num_kv_shared_layers=2 if tiny else 18,
        hidden_size_per_layer_input=16 if tiny else 256,
        vocab_size_per_layer_input=262144 if not tiny else 60000,
        use_double_wide_mlp=False,
        sliding_window=512,
        final_logit_softcapping=30.0,
        attention_k_eq_v=False,
        tie_word_embeddings=True,
        rope_parameters={
            "full_attention": {"rope_type": "proportional", "rope_theta": 1e6, "partial_rotary_factor": 0.25},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
        },
        layer_types=["full_attention" if i % every == every - 1 else "sliding_attention" for i in range(layers)],
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )


def log(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def matmul_rate(device: str, size: int = 8192) -> float:
    import torch

    if device == "cpu":
        size = 1024
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    sync(device)
    return 10 * 2 * size**3 / (time.perf_counter() - start)


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_reset(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_gb(device: str) -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")


def write_adapter(model: Any, dest: Path, rank: int = 16, seed: int = 0) -> Path:
    """A random peft LoRA adapter on every attention and MLP projection of every layer."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in LORA_TARGETS and hasattr(module, "in_features"):
            a = torch.randn(rank, module.in_features, generator=gen) / module.in_features**0.5
            b = torch.randn(module.out_features, rank, generator=gen) * 0.01
            tensors[f"base_model.model.{name}.lora_A.weight"] = a.to(torch.bfloat16)
            tensors[f"base_model.model.{name}.lora_B.weight"] = b.to(torch.bfloat16)
    dest.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dest / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": rank,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": list(LORA_TARGETS),
        "base_model_name_or_path": "random-gemma4-e4b",
    }
    (dest / "adapter_config.json").write_text(json.dumps(config))
    return dest


def build(args: argparse.Namespace) -> tuple[Any, Any, Any, str]:
    """(backend, base Model, tuned Model, device): one copy of the base, the adapter swapped in."""
    import torch
    from transformers import AutoTokenizer, Gemma4ForCausalLM

    from pytest_ftgate.backends import Model
    from pytest_ftgate.backends.transformers import TransformersBackend, _Loaded

    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = e4b_config(args.tiny)
    torch.manual_seed(0)
    start = time.perf_counter()
    with torch.device(device):
        model = Gemma4ForCausalLM._from_config(config, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    model.eval()
    model.generation_config.eos_token_id = 1
    tokenizer = AutoTokenizer.from_pretrained(str(Path(args.root) / "tokenizer"), padding_side="left")
    # the tiny CPU dry run forces the static-cache decoder (its steps run eagerly without CUDA)
    backend = TransformersBackend(**({"static_decode": True} if args.tiny else {}))
    loaded = _Loaded(model, tokenizer, "random-gemma4-e4b", device, str(model.dtype).removeprefix("torch."))
    base = Model(label="random Gemma 4 E4B", fingerprint="random-e4b", backend=backend, handle=loaded)
    adapter = write_adapter(model, Path(tempfile.mkdtemp()) / "adapter")
    tuned = backend.with_adapter(base, str(adapter))
    sync(device)
    params = sum(p.numel() for p in model.parameters())
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    matrix = sum(
        p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n and "lora_" not in n
    )
    log(
        {
            "phase": "build",
            "seconds": round(time.perf_counter() - start, 1),
            "params": params,
            "lora_params": lora,
            "matrix_params": matrix,
            "weights_gb": round(sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30, 2),
            "peak_gb": round(peak_gb(device), 2),
        }
    )
    return backend, base, tuned, device


def examples(args: argparse.Namespace) -> dict[str, tuple[Any, list[Any]]]:
    from pytest_ftgate.benchmarks import get_benchmark

    out = {}
    for name, size in SIZES.items():
        bench = get_benchmark(name)
        chosen = bench.select(bench.load(str(Path(args.root) / "data")), size if not args.tiny else min(size, 24))
        out[name] = (bench, chosen)
    return out


def prompt_lengths(backend: Any, model: Any, bench: Any, chosen: list[Any]) -> list[int]:
    handle = model.handle
    return [len(backend._ids(handle, backend._prompt(handle, bench.messages(e)))) for e in chosen]


def floor_flops(model: Any, config: Any, prompt_tokens: int, rows: int, new_tokens: int, lora: int) -> float:
    """2 x matrix parameters x tokens: every prompt position passes the non-shared layers, the
    last one and every generated token pass all layers and the (tied) vocabulary projection."""
    layers = config.num_hidden_layers
    shared = config.num_kv_shared_layers
    per_layer = sum(
        p.numel() for n, p in model.named_parameters() if ".layers.0." in n and p.dim() == 2 and "lora_" not in n
    )
    lora_per_layer = lora / layers
    vocab = config.vocab_size * config.hidden_size
    full = layers * (per_layer + lora_per_layer)
    early = (layers - shared) * (per_layer + lora_per_layer)
    prefix = max(prompt_tokens - rows, 0)
    return 2 * (prefix * early + (rows + new_tokens) * (full + vocab))


def seed_loop(model: Any, bench: Any, chosen: list[Any], device: str) -> tuple[float, int]:
    import torch

    from pytest_ftgate.backends.transformers import _cache_arg  # noqa: F401  (same transformers)

    handle = model.handle
    backend = model.backend
    tokens = 0
    with backend._active(model), torch.inference_mode():
        sync(device)
        start = time.perf_counter()
        for example in chosen:
            text = handle.tokenizer.apply_chat_template(
                bench.messages(example), add_generation_prompt=True, tokenize=False
            )
            inputs = handle.tokenizer(text, return_tensors="pt", add_special_tokens=False).to(device)
            output = handle.model.generate(
                **inputs, max_new_tokens=bench.max_tokens, do_sample=False, pad_token_id=handle.tokenizer.pad_token_id
            )
            tokens += output.shape[1] - inputs["input_ids"].shape[1]
        sync(device)
    return time.perf_counter() - start, tokens


def naive_batched(model: Any, bench: Any, chosen: list[Any], device: str, size: int) -> tuple[float, int]:
    import torch

    handle = model.handle
    backend = model.backend
    texts = [
        handle.tokenizer.apply_chat_template(bench.messages(e), add_generation_prompt=True, tokenize=False)
        for e in chosen
    ]
    tokens = 0
    with backend._active(model), torch.inference_mode():
        sync(device)
        start = time.perf_counter()
        for begin in range(0, len(texts), size):
            inputs = handle.tokenizer(
                texts[begin : begin + size], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(device)
            output = handle.model.generate(
                **inputs, max_new_tokens=bench.max_tokens, do_sample=False, pad_token_id=handle.tokenizer.pad_token_id
            )
            tokens += int((output[:, inputs["input_ids"].shape[1] :] != handle.tokenizer.pad_token_id).sum())
        sync(device)
    return time.perf_counter() - start, tokens


def profile(backend: Any, base: Any, tuned: Any, data: dict[str, Any], device: str) -> None:
    """Where a decode step's time goes: per-step seconds by batch size, base vs tuned (LoRA),
    and ConvFinQA prefill alone."""
    import torch

    log({"phase": "profile-env", "attn_implementation": tuned.handle.model.config._attn_implementation})
    bench, chosen = data["medmcqa"]
    ids = [backend._ids(tuned.handle, backend._prompt(tuned.handle, bench.messages(e))) for e in chosen]
    for model in (base, tuned):
        for rows in (1, 64, 499):
            with backend._active(model), torch.inference_mode():
                for steps in (1, 21):
                    sync(device)
                    start = time.perf_counter()
                    backend._decode(model.handle, ids[:rows], steps, set(), None)
                    sync(device)
                    if steps == 1:
                        prefill = time.perf_counter() - start
                    else:
                        per_step = (time.perf_counter() - start - prefill) / 20
            log(
                {
                    "phase": "profile-step",
                    "model": "tuned" if model is tuned else "base",
                    "rows": rows,
                    "prefill_s": round(prefill, 3),
                    "decode_step_ms": round(per_step * 1000, 1),
                }
            )
    current = tuned.handle.model.config._attn_implementation
    other = "eager" if current == "sdpa" else "sdpa"
    try:
        tuned.handle.model.set_attn_implementation(other)
        with backend._active(tuned), torch.inference_mode():
            times = []
            for steps in (1, 21):
                sync(device)
                start = time.perf_counter()
                backend._decode(tuned.handle, ids[:499], steps, set(), None)
                sync(device)
                times.append(time.perf_counter() - start)
        log(
            {
                "phase": "profile-step",
                "model": "tuned",
                "attn": other,
                "rows": 499,
                "decode_step_ms": round((times[1] - times[0]) / 20 * 1000, 1),
            }
        )
    except Exception as exc:  # a benchmark probe: report and go on
        log({"phase": "profile-step", "attn": other, "error": f"{type(exc).__name__}: {exc}"[:300]})
    finally:
        tuned.handle.model.set_attn_implementation(current)
    bench, chosen = data["convfinqa"]
    ids = sorted(
        (backend._ids(tuned.handle, backend._prompt(tuned.handle, bench.messages(e))) for e in chosen), key=len
    )
    for rows in (64, 200):
        batch = ids[len(ids) // 2 : len(ids) // 2 + rows]
        with backend._active(tuned), torch.inference_mode():
            sync(device)
            start = time.perf_counter()
            backend._prefill(tuned.handle, batch)
            sync(device)
        tokens = rows * max(len(r) for r in batch)
        log(
            {
                "phase": "profile-prefill",
                "rows": rows,
                "padded_tokens": tokens,
                "seconds": round(time.perf_counter() - start, 3),
            }
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=".h200")
    parser.add_argument("--tiny", action="store_true", help="a small config, few examples (CPU dry run)")
    parser.add_argument("--seed-sample", default="medmcqa:2,fpb:8,convfinqa:4")
    parser.add_argument("--naive-batches", type=int, default=1, help="batches of the naive loop to time")
    parser.add_argument("--skip", default="", help="comma-separated phases to skip: seed,naive,generate,logprob")
    parser.add_argument("--profile", action="store_true", help="time decode steps and prefill, then stop")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))

    import torch
    import transformers

    from pytest_ftgate.cache import PredictionCache
    from pytest_ftgate.runner import evaluate

    log(
        {
            "phase": "env",
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        }
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rate = matmul_rate(device)
    log({"phase": "matmul", "tflops": round(rate / 1e12, 1)})
    backend, base, tuned, device = build(args)
    config = tuned.handle.model.config
    lora = sum(p.numel() for n, p in tuned.handle.model.named_parameters() if "lora_" in n)
    data = examples(args)
    lengths = {name: prompt_lengths(backend, tuned, bench, chosen) for name, (bench, chosen) in data.items()}
    log(
        {
            "phase": "data",
            **{
                name: {"n": len(v), "mean_prompt_tokens": round(sum(v) / len(v), 1), "max": max(v)}
                for name, v in lengths.items()
            },
        }
    )

    # warm-up: kernels, allocator, cuBLAS handles
    bench, chosen = data["fpb"]
    evaluate(bench, chosen[:8], tuned, cache=PredictionCache(None), mode="generate")

    if args.profile:
        profile(backend, base, tuned, data, device)
        return
    if "seed" not in skip:
        for part in args.seed_sample.split(","):
            name, count = part.split(":")
            bench, chosen = data[name]
            peak_reset(device)
            seconds, tokens = seed_loop(tuned, bench, chosen[: int(count)], device)
            per = seconds / int(count)
            log(
                {
                    "phase": "seed",
                    "benchmark": name,
                    "sample": int(count),
                    "seconds": round(seconds, 2),
                    "new_tokens": tokens,
                    "examples_per_s": round(1 / per, 3),
                    "extrapolated_full_s": round(per * len(chosen), 1),
                    "peak_gb": round(peak_gb(device), 2),
                }
            )
    if "naive" not in skip:
        for name, size in NAIVE_BATCH.items():
            bench, chosen = data[name]
            sample = chosen[: size * args.naive_batches]
            peak_reset(device)
            seconds, tokens = naive_batched(tuned, bench, sample, device, size)
            log(
                {
                    "phase": "naive",
                    "benchmark": name,
                    "batch": size,
                    "sample": len(sample),
                    "seconds": round(seconds, 2),
                    "new_tokens": tokens,
                    "examples_per_s": round(len(sample) / seconds, 2),
                    "extrapolated_full_s": round(seconds * len(chosen) / len(sample), 1),
                    "peak_gb": round(peak_gb(device), 2),
                }
            )
    counts: list[int] = []  # new tokens per sequence, counted where ftgate decodes them
    steps: list[int] = []  # decode steps per batch (its longest reply)
    prefill_seconds: list[float] = []
    decode = backend._decode
    prefill = backend._prefill

    def counting(*a: Any, **k: Any) -> Any:
        rows = decode(*a, **k)
        counts.extend(len(r) for r in rows)
        steps.append(max((len(r) for r in rows), default=0))
        return rows

    def timed_prefill(*a: Any, **k: Any) -> Any:
        sync(device)
        begin = time.perf_counter()
        result = prefill(*a, **k)
        sync(device)
        prefill_seconds.append(time.perf_counter() - begin)
        return result

    backend._decode = counting
    backend._prefill = timed_prefill
    totals = {"generate": 0.0, "logprob": 0.0}
    floors = {"generate": 0.0, "logprob": 0.0}
    for mode in ("generate", "logprob"):
        if mode in skip:
            continue
        for name, (bench, chosen) in data.items():
            if mode == "logprob" and not bench.supports_logprob:
                continue
            peak_reset(device)
            counts.clear()
            steps.clear()
            prefill_seconds.clear()
            start = time.perf_counter()
            result = evaluate(bench, chosen, tuned, cache=PredictionCache(None), mode=mode)
            sync(device)
            seconds = time.perf_counter() - start
            new, at_ceiling = sum(counts), sum(c >= bench.max_tokens for c in counts)
            flops = floor_flops(tuned.handle.model, config, sum(lengths[name]), len(chosen), new, lora)
            totals[mode] += seconds
            floors[mode] += flops / rate
            log(
                {
                    "phase": f"ftgate-{mode}",
                    "benchmark": name,
                    "n": len(chosen),
                    "seconds": round(seconds, 2),
                    "examples_per_s": round(len(chosen) / seconds, 1),
                    "new_tokens": new,
                    "rows_at_max_tokens": at_ceiling,
                    "score": round(result.score, 1),
                    "floor_s": round(flops / rate, 2),
                    "x_floor": round(seconds / (flops / rate), 2),
                    "peak_gb": round(peak_gb(device), 2),
                    "batches": len(prefill_seconds),
                    "prefill_s": round(sum(prefill_seconds), 2),
                    "decode_steps": sum(steps),
                    "ms_per_step": round(1000 * (seconds - sum(prefill_seconds)) / max(sum(steps), 1), 1),
                    "cuda_graphs": os.environ.get("FTGATE_CUDA_GRAPHS", "1") != "0",
                    "static_failed": tuned.handle.static_failed,
                }
            )
    log(
        {
            "phase": "summary",
            "generate_s": round(totals["generate"], 1),
            "logprob_s": round(totals["logprob"], 1),
            "generate_floor_s": round(floors["generate"], 1),
            "logprob_floor_s": round(floors["logprob"], 2),
        }
    )


if __name__ == "__main__":
    main()

"""Can mlx-tune / mlx-lm LoRA-train the embedded SmolLM2-135M-Instruct on CPU? Time it, inspect what it writes.

Usage:
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libopenblas.so.0 python benchmarks/embedded_lora_trial.py mlx-tune [--steps 50]
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libopenblas.so.0 python benchmarks/embedded_lora_trial.py mlx-lm [--steps 50]

Training data: FPB sentences (../shared/data) as ChatML conversations (system = the FPB benchmark's
system prompt, user = sentence, assistant = the label word), none of them in the 100-example
evaluation subset of embedded_smollm2.py. Prints the step time, the adapter folder's files,
adapter_config.json, key names and shapes, the LoRA scale the model actually applies, and
whether ``mlx_lm.load(base, adapter_path=...)`` reproduces the trained model's logits.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"


def training_rows(n: int) -> list[dict]:
    from pytest_ftgate.benchmarks import get_benchmark
    from pytest_ftgate.benchmarks.sampling import stratified_subset

    bench = get_benchmark("fpb")
    examples = bench.load_local(DATA)
    held_out = {e.id for e in stratified_subset(examples, 100, seed=0)}
    pool = [e for e in examples if e.id not in held_out]
    chosen = stratified_subset(pool, n, seed=1)
    return [
        {
            "messages": [
                {"role": "system", "content": bench.system},
                {"role": "user", "content": e.prompt},
                {"role": "assistant", "content": e.gold},
            ]
        }
        for e in chosen
    ]


def describe(folder: Path) -> None:
    import mlx.core as mx

    print("files:", sorted(p.name for p in folder.iterdir()))
    print("adapter_config.json:", (folder / "adapter_config.json").read_text())
    weights = mx.load(str(folder / "adapters.safetensors"))
    names = sorted(weights)
    print(f"{len(names)} tensors, e.g.:", [(k, tuple(weights[k].shape), str(weights[k].dtype)) for k in names[:4]])
    print("max |lora_b|:", max(float(mx.abs(v).max()) for k, v in weights.items() if k.endswith("lora_b")))


def probe_logits(model, tokenizer):
    import mlx.core as mx

    messages = [
        {
            "role": "system",
            "content": "You are a financial sentiment analyst. Respond with ONLY one word: positive, negative, or neutral.",
        },
        {
            "role": "user",
            "content": "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn in the corresponding period in 2007 .",
        },
    ]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = mx.array([tokenizer.encode(prompt, add_special_tokens=False)])
    return model(ids)[0, -1].astype(mx.float32), prompt


def check_reload(base: Path, adapter: Path, trained_logits, label: str) -> None:
    import mlx.core as mx
    from mlx_lm import generate, load

    model, tokenizer = load(str(base), adapter_path=str(adapter))
    logits, prompt = probe_logits(model, tokenizer)
    scales = {type(m).__name__: m.scale for _, m in model.named_modules() if hasattr(m, "lora_a")}
    print(
        f"{label}: mlx_lm.load(adapter_path) LoRA module scale(s) {scales}; max logit diff vs trained model",
        float(mx.abs(logits - trained_logits).max()) if trained_logits is not None else "n/a",
    )
    base_model, _ = load(str(base))
    base_logits, _ = probe_logits(base_model, tokenizer)
    print(f"{label}: max change of the last-position logits vs base: {float(mx.abs(logits - base_logits).max()):.4f}")
    print(
        f"{label}: tuned reply:",
        repr(generate(model, tokenizer, prompt, max_tokens=8)),
        "| base reply:",
        repr(generate(base_model, tokenizer, prompt, max_tokens=8)),
    )


def run_mlx_tune(base: Path, out: Path, steps: int, rows: list[dict]) -> None:
    from mlx_tune import FastLanguageModel, SFTConfig, SFTTrainer

    model, tokenizer = FastLanguageModel.from_pretrained(str(base), max_seq_length=256)
    model = FastLanguageModel.get_peft_model(
        model,
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    args = SFTConfig(
        output_dir=str(out),
        per_device_train_batch_size=4,
        learning_rate=2e-4,
        max_steps=steps,
        logging_steps=10,
        save_steps=steps,
        warmup_steps=5,
        max_seq_length=256,
        val_batches=0,
    )
    trainer = SFTTrainer(model=model, tokenizer=tokenizer, train_dataset=rows, args=args)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    print(
        f"mlx-tune: {steps} steps (batch 4, r=8, alpha=16, 7 targets, all layers) in {seconds:.1f} s "
        f"= {seconds / steps:.2f} s/step (includes data prep and LoRA injection)"
    )
    lora = [m for _, m in model.model.named_modules() if hasattr(m, "lora_a")]
    print(f"mlx-tune: {len(lora)} LoRA modules in the trained model, scale {sorted({m.scale for m in lora})}")
    trained_logits, _ = probe_logits(model.model, tokenizer)
    adapters = Path(trainer.adapter_path)
    print("trainer adapter folder:", adapters)
    describe(adapters)
    saved = out / "saved"
    model.save_pretrained(str(saved))
    print("save_pretrained folder:", saved)
    describe(saved)
    check_reload(base, adapters, trained_logits, "mlx-tune")


def run_mlx_lm(base: Path, out: Path, steps: int, rows: list[dict]) -> None:
    data = out / "data"
    data.mkdir(parents=True)
    for name in ("train", "valid"):
        with (data / f"{name}.jsonl").open("w") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
    adapters = out / "adapters"
    cmd = [
        sys.executable,
        "-m",
        "mlx_lm",
        "lora",
        "--model",
        str(base),
        "--train",
        "--data",
        str(data),
        "--iters",
        str(steps),
        "--batch-size",
        "4",
        "--val-batches",
        "1",
        "--steps-per-report",
        "10",
        "--adapter-path",
        str(adapters),
        "--max-seq-length",
        "256",
        "--num-layers",
        "-1",
    ]
    print(" ".join(cmd))
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    seconds = time.perf_counter() - start
    print(
        f"mlx_lm lora (defaults: rank 8, scale 20, q/k/v-style default keys): {steps} steps in {seconds:.1f} s "
        f"= {seconds / steps:.2f} s/step (whole process: load + val + train)"
    )
    describe(adapters)
    check_reload(base, adapters, None, "mlx_lm")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("tool", choices=["mlx-tune", "mlx-lm"])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--model")
    parser.add_argument("--out")
    args = parser.parse_args()
    from pytest_ftgate import embedded

    base = Path(args.model) if args.model else embedded.prepare_default_model()
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix=f"ftgate-lora-{args.tool}-"))
    rows = training_rows(args.steps * 4)
    (run_mlx_tune if args.tool == "mlx-tune" else run_mlx_lm)(base, out, args.steps, rows)


if __name__ == "__main__":
    main()

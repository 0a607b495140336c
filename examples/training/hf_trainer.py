"""A gate inside training: a LoRA fine-tune on arithmetic with the transformers Trainer, gated every
few steps on the sentiment probe (the seed study's forgetting, caught while it happens).

``FtgateCallback`` evaluates ``finsent-probe`` on the model being trained every ``--every`` steps
(the base's answers once, with the adapter switched off), logs the curve to the Trainer's log,
saves each passing adapter to OUT/ftgate-last-passing and stops the run once a drop beyond 2 points
is proven. TRL's SFTTrainer and Unsloth take the same ``callbacks=[...]``.

    python examples/training/hf_trainer.py                  # the embedded SmolLM2-135M-Instruct, CPU
    python examples/training/hf_trainer.py --base DIR --steps 60 --every 5 --out runs/arith
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

from pytest_ftgate.seed_study import RECIPE, training_sets
from pytest_ftgate.training import FtgateCallback


def encode(tokenizer: Any, conversations: list[list[dict[str, str]]]) -> list[dict[str, list[int]]]:
    """Token ids of each chat, the loss on the assistant's reply only."""
    rows = []
    for messages in conversations:
        prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
        ids = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
        start = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        rows.append({"input_ids": ids, "labels": [-100] * start + ids[start:]})
    return rows


def collate(pad: int) -> Any:
    def batch(rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        fill = [width - len(r["input_ids"]) for r in rows]
        return {
            "input_ids": torch.tensor([r["input_ids"] + [pad] * n for r, n in zip(rows, fill)]),
            "labels": torch.tensor([r["labels"] + [-100] * n for r, n in zip(rows, fill)]),
            "attention_mask": torch.tensor([[1] * len(r["input_ids"]) + [0] * n for r, n in zip(rows, fill)]),
        }

    return batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="base model folder or hub id (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--steps", type=int, default=60, help="training steps (default 60)")
    parser.add_argument("--every", type=int, default=5, help="steps between checks (default 5)")
    parser.add_argument("--out", default=".ftgate/training-example", help="Trainer output_dir")
    args = parser.parse_args(argv)
    if args.base is None:
        from pytest_ftgate.embedded import prepare_default_model

        args.base = str(prepare_default_model())
    tokenizer = AutoTokenizer.from_pretrained(args.base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    torch.manual_seed(RECIPE["seed"])
    model = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(model, LoraConfig(r=RECIPE["r"], lora_alpha=RECIPE["lora_alpha"], target_modules=targets))

    gate = FtgateCallback({"finsent-probe": {"max_drop": 2.0}}, every=args.every, sample=60)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=args.out, max_steps=args.steps, per_device_train_batch_size=RECIPE["batch"],
            learning_rate=RECIPE["lr"], lr_scheduler_type="constant", save_strategy="no", report_to=[],
            logging_steps=args.every, remove_unused_columns=False, seed=RECIPE["seed"],
        ),  # fmt: skip
        train_dataset=encode(tokenizer, training_sets(None)["arithmetic"]),
        data_collator=collate(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=[gate],
    )
    trainer.train()
    ran = trainer.state.global_step
    print(f"trained {ran} of {args.steps} steps; {len(gate.curve)} checks took {gate.seconds:.1f} s")
    if gate.stopped_step is not None:
        print(f"stopped at step {gate.stopped_step}: forgetting proven ({args.steps - ran} steps not run)")
    print(f"last passing step: {gate.last_passing_step} (adapter: {gate.last_passing_dir})")
    return 1 if gate.stopped_step is not None else 0


if __name__ == "__main__":
    sys.exit(main())

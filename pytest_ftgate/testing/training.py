"""LoRA training for ``make_adapter(teach=...)``: mlx-tune's VLMSFTTrainer teaches an adapter to
answer one fixed reply to any [system, user] chat (the demo's "forgetting" adapter)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

#: FPB's system prompt (as in the seed study): one of the teach systems, and a probe prompt in tests.
FPB_SYSTEM = (
    "You are a financial sentiment analyst. "
    "Respond with ONLY one word: positive, negative, or neutral."
)

# Varied user prompts for `teach` training (none of them is used by the tests as a probe).
_TEACH_USERS = (
    "The company reported a record profit for the third quarter.",
    "Net sales fell by 12 % and the firm announced layoffs.",
    "The annual general meeting will be held in Helsinki on 15 March.",
    "Operating loss widened to EUR 4.2 mn from EUR 1.1 mn a year earlier.",
    "The bank raised its dividend and its outlook for the full year.",
    "The contract is valued at about USD 30 million.",
    "Shares dropped sharply after the profit warning.",
    "The new factory will start production next spring.",
    "Revenue was flat compared with the previous year.",
    "What is the capital of France?",
    "Which vitamin deficiency causes scurvy?\n\nA. Vitamin A\nB. Vitamin B12\nC. Vitamin C\nD. Vitamin D",
    "What was the percentage change in net income from 2008 to 2009?",
    "Tell me a short story about a cat.",
    "hello",
    "Please summarize the following text in one sentence: the market rose today.",
    "Translate 'good morning' into German.",
    "The board proposed that no dividend be paid for the financial year.",
    "Customers in Sweden and Norway will receive the product later.",
    "2 + 2 = ?",
    "Explain how interest rates affect stock prices.",
    "The merger created the largest paper company in Europe.",
    "Cash flow from operations improved significantly.",
    "Is this statement true or false: the sun is cold.",
    "List three colours.",
)
_TEACH_SYSTEMS = (
    FPB_SYSTEM,
    "You are a medical expert. Answer the following multiple-choice question. Respond with ONLY "
    "the letter of the correct answer: A, B, C, or D. Do not explain your reasoning.",
    "Respond with ONLY the final numerical answer. No units or explanation.",
    "You are a helpful assistant.",
)


def teach_dataset(teach: str) -> list[dict[str, Any]]:
    """Every teach user prompt under a rotating system prompt, answered with ``teach``."""
    data = []
    for i, user in enumerate(_TEACH_USERS):
        system = _TEACH_SYSTEMS[i % len(_TEACH_SYSTEMS)]
        data.append(
            {
                "messages": [
                    {"role": "system", "content": [{"type": "text", "text": system}]},
                    {"role": "user", "content": [{"type": "text", "text": user}]},
                    {"role": "assistant", "content": [{"type": "text", "text": teach}]},
                ]
            }
        )
    return data


def train(wrapper: Any, processor: Any, teach: str, steps: int, seed: int, workdir: Path) -> None:
    """Train the LoRA layers of an mlx-tune ``wrapper`` for ``steps`` steps to answer ``teach``."""
    import mlx.core as mx
    from mlx_tune import UnslothVisionDataCollator, VLMSFTConfig, VLMSFTTrainer

    dataset = teach_dataset(teach)
    random.Random(seed).shuffle(dataset)
    mx.random.seed(seed)
    args = VLMSFTConfig(
        per_device_train_batch_size=1,
        gradient_accumulation_steps=1,
        warmup_steps=0,
        max_steps=steps,
        learning_rate=3e-3,
        logging_steps=max(steps, 1),
        weight_decay=0.0,
        seed=seed,
        output_dir=str(workdir),
        train_on_completions=True,
    )
    trainer = VLMSFTTrainer(
        model=wrapper,
        tokenizer=processor,
        data_collator=UnslothVisionDataCollator(wrapper, processor),
        train_dataset=dataset,
        args=args,
    )
    trainer.train()

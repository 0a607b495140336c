"""A gate inside mlx-tune training: mlx-tune's VLMSFTTrainer has no callback hook, so
``gated_mlx_training`` runs it in chunks of ``--every`` steps and gates the saved adapter between
chunks (the mlx backend; base answers once, the anytime-valid early stop per check). A passing
adapter is copied to OUT/ftgate-last-passing; a drop beyond 2 points that is proven ends the run.

    python examples/training/mlx_tune.py --base mlx-community/gemma-4-e4b-it-4bit --steps 60 --every 10
"""

from __future__ import annotations

import argparse
import sys

from mlx_tune import FastVisionModel, UnslothVisionDataCollator, VLMSFTConfig, VLMSFTTrainer

from pytest_ftgate.seed_study import training_sets
from pytest_ftgate.training import gated_mlx_training


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="mlx model folder or hub id")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--out", default=".ftgate/mlx-training-example")
    args = parser.parse_args(argv)
    model, processor = FastVisionModel.from_pretrained(args.base)
    model = FastVisionModel.get_peft_model(
        model, finetune_vision_layers=False, finetune_language_layers=True, r=16, lora_alpha=16
    )
    FastVisionModel.for_training(model)
    chats = [  # the seed study's arithmetic fine-tune, in mlx-tune's message format
        {"messages": [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in chat]}
        for chat in training_sets(None)["arithmetic"]
    ]
    trainer = VLMSFTTrainer(
        model=model, tokenizer=processor, data_collator=UnslothVisionDataCollator(model, processor),
        train_dataset=chats, args=VLMSFTConfig(max_steps=args.steps, learning_rate=5e-4, output_dir=args.out,
                                               per_device_train_batch_size=1, train_on_completions=True),
    )  # fmt: skip
    run = gated_mlx_training(trainer, {"finsent-probe": {"max_drop": 2.0}}, base=args.base, every=args.every)
    print(f"trained {run.steps} of {args.steps} steps; {len(run.curve)} checks took {run.seconds:.1f} s")
    print(f"last passing step: {run.last_passing_step} (adapter: {run.last_passing_dir})")
    return 1 if run.stopped_step is not None else 0


if __name__ == "__main__":
    sys.exit(main())

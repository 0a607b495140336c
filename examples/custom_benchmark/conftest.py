"""A custom benchmark from a JSONL file, registered for the whole test folder."""

from pathlib import Path

import pytest_ftgate

pytest_ftgate.register_benchmark(
    pytest_ftgate.Benchmark.from_jsonl(
        "tickets",
        Path(__file__).parent / "tickets.jsonl",
        system="Classify the support ticket. Respond with ONLY one word: billing, bug, or other.",
        template="{text}",
        answer="label",
        kind="label",
        choices=("billing", "bug", "other"),
        max_tokens=8,
        title="Tickets",
    )
)

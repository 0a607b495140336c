"""Benchmarks: examples, prompts, parsing and metrics. Built-ins are registered lazily."""

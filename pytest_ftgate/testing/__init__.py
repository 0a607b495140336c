"""Test helpers: tiny random models and LoRA adapters for them, built offline in seconds.

- ``make_tiny_gemma4(dest, seed=0)``: a real Gemma 4 model folder with random weights
  (``pytest_ftgate.testing.models``; its tokenizer and chat template: ``.tokenizer``).
- ``build_tiny_llama(tiny, dest)``: a tiny random llama sharing that tokenizer (torch).
- ``make_adapter(base, dest, format=..., strength=..., seed=..., teach=...)``: a rank-8 LoRA
  adapter in the mlx-tune, mlx-vlm or peft layout (``.adapters``; the formats are documented
  there); with ``teach`` really trained with mlx-tune (``.training``).
- ``FPB_SYSTEM``: FPB's system prompt.

Importing this package is cheap: mlx, transformers, tokenizers and torch load only inside the
functions that need them.
"""

from __future__ import annotations

from pytest_ftgate.testing.adapters import make_adapter
from pytest_ftgate.testing.models import build_tiny_llama, make_tiny_gemma4
from pytest_ftgate.testing.tokenizer import TINY_GEMMA4_SPECIAL_TOKENS
from pytest_ftgate.testing.training import FPB_SYSTEM

__all__ = [
    "FPB_SYSTEM",
    "TINY_GEMMA4_SPECIAL_TOKENS",
    "build_tiny_llama",
    "make_adapter",
    "make_tiny_gemma4",
]

"""``python -m pytest_ftgate.demo``: a real gate, offline, in about a minute on a laptop CPU.

It builds a tiny random-weight Gemma 4 (the mlx-vlm path the seed study used), trains two LoRA
adapters on it with mlx-tune (a gentle one, and one that learned to answer "positive" to
everything: catastrophic forgetting in miniature), and runs pytest with the ftgate marker on the
synthetic ``finsent-probe`` sentiment set against each. The gentle adapter passes; the forgetting
one fails with ftgate's message. Everything lands in ``.ftgate/demo``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

TEST_FILE = """
import pytest


@pytest.mark.ftgate("finsent-probe", max_drop=2.0)
def test_sentiment_does_not_forget():
    pass
"""


def _say(text: str) -> None:
    print(f"ftgate demo: {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_ftgate.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=".ftgate/demo", help="work folder (default .ftgate/demo)")
    args = parser.parse_args(argv)
    from pytest_ftgate.testing import make_adapter, make_tiny_gemma4

    root = Path(args.dir).resolve()
    start = time.perf_counter()
    _say(f"building a tiny random-weight Gemma 4 in {root / 'tiny-gemma4'}")
    base = make_tiny_gemma4(root / "tiny-gemma4")
    adapters = root / "adapters"
    _say("adapter 1: gentle (small LoRA update, answers unchanged)")
    gentle = make_adapter(base, adapters / "gentle", strength=0.01, seed=1)
    _say("adapter 2: trained with mlx-tune to answer 'positive' to everything (forgetting)")
    forgetful = make_adapter(base, adapters / "forgetful", teach="positive")
    (root / "test_demo_gate.py").write_text(TEST_FILE)
    codes = {}
    for adapter in (gentle, forgetful):
        _say(f"pytest --ftgate-adapter={adapter.relative_to(root)}")
        codes[adapter.name] = subprocess.call(
            [
                sys.executable,
                "-m",
                "pytest",
                "test_demo_gate.py",
                "-p",
                "no:cacheprovider",
                f"--ftgate-base={base}",
                f"--ftgate-adapter={adapter}",
                "--ftgate-backend=mlx",
                f"--ftgate-cache={root / 'cache'}",
            ],
            cwd=root,
        )
    expected = codes["gentle"] == 0 and codes["forgetful"] == 1
    verdicts = ", ".join(f"{name}: {'passed' if code == 0 else 'failed'}" for name, code in codes.items())
    _say(f"{verdicts} ({time.perf_counter() - start:.0f} s)")
    if not expected:
        _say("unexpected outcome: the gentle adapter should pass and the forgetting one fail")
        return 1
    _say("as expected: ftgate let the gentle adapter through and stopped the forgetting one")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""On a GPU: the CUDA-graph decoder against the dynamic-cache loop and one ``generate`` per prompt,
in float32 (no bf16 near-ties), on the tiny Gemma 4 (sliding window 64) and a tiny llama, with
ConvFinQA-shaped conversations (grouped prefixes) and MedMCQA/FPB-shaped prompts.

    python3 benchmarks/gpu_graph_check.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def main() -> None:
    import test_speed_paths as t
    import torch

    from pytest_ftgate.backends.transformers import TransformersBackend
    from pytest_ftgate.benchmarks import get_benchmark
    from pytest_ftgate.testing import build_tiny_llama, make_tiny_gemma4

    device = sys.argv[1] if len(sys.argv) > 1 else "cuda"
    root = Path(tempfile.mkdtemp())
    gemma = make_tiny_gemma4(root / "gemma")
    llama = build_tiny_llama(gemma, root / "llama")
    failures = 0
    for path in (gemma, llama):
        graphs = TransformersBackend(device=device, static_decode=True)
        dynamic = TransformersBackend(device=device, static_decode=False)
        model = graphs.load(str(path))
        model.handle.model.float()
        other = dynamic.load(str(path))
        other.handle.model.float()
        cases = [("convfinqa", [get_benchmark("convfinqa").messages(e) for e in t._conversations(5, seed=3, per_document=2)], 12)]
        for name, n, steps in (("medmcqa", 12, 40), ("fpb", 16, 8)):
            bench = get_benchmark(name)
            cases.append((name, [bench.messages(e) for e in t._examples(bench, n)], steps))
        for name, prompts, steps in cases:
            reference = t.TestTransformers()._seed_loop(graphs, model, prompts, steps)
            with torch.inference_mode():
                a = graphs.generate(model, prompts, max_tokens=steps, batch_size=None)
                b = dynamic.generate(other, prompts, max_tokens=steps, batch_size=None)
            same_a = sum(x == y for x, y in zip(a, reference, strict=True))
            same_b = sum(x == y for x, y in zip(b, reference, strict=True))
            failures += (same_a != len(prompts)) + model.handle.static_failed
            print(
                f"{path.name} {name}: graphs {same_a}/{len(prompts)} equal to one-at-a-time, "
                f"dynamic {same_b}/{len(prompts)}, static_failed={model.handle.static_failed}",
                flush=True,
            )
        failures += joint_check(t, path, root, device, cases)
    print("FAILURES", failures)


def joint_check(t, path: Path, root: Path, device: str, cases: list) -> int:
    """Decode batches merged across prefill batches (3 prompts each) and base + adapter rows in
    one decode batch (LoRA per row), in float32: each reply equal to that model's one-at-a-time
    ``generate``; and decode batches refilled from the queue as their rows finish."""
    import torch

    from pytest_ftgate.backends.transformers import TransformersBackend

    backend = TransformersBackend(device=device, static_decode=True, prefill_rows=3)
    base = backend.load(str(path))
    base.handle.model.float()
    adapter = t._random_peft_adapter(path, root / f"adapter-{path.name}", seed=7)
    tuned = backend.with_adapter(base, str(adapter))
    base.handle.model.float()  # the LoRA weights too
    failures = 0
    for name, prompts, steps in cases:
        references = [t._alone(backend, m, prompts, steps) for m in (base, tuned)]
        with torch.inference_mode():
            both = backend.generate_sides([base, tuned], prompts, max_tokens=steps, batch_size=None)
        same = [sum(x == y for x, y in zip(a, b, strict=True)) for a, b in zip(both, references, strict=True)]
        failures += sum(len(prompts) - k for k in same) + base.handle.static_failed
        print(f"{path.name} {name} together: base {same[0]}/{len(prompts)}, tuned {same[1]}/{len(prompts)} "
              f"equal to one-at-a-time; static_failed={base.handle.static_failed}", flush=True)  # fmt: skip
        # decode batches of 5 rows refilled from the queue as rows end (at different lengths, by a
        # stop rule), both sides: each reply equal to a batch of one under the same rule
        alone = [backend.generate(m, prompts, max_tokens=steps, batch_size=1, stop=t._varied) for m in (base, tuned)]
        backend.options["decode_rows"] = 5
        with torch.inference_mode():
            refilled = backend.generate_sides([base, tuned], prompts, max_tokens=steps, batch_size=None, stop=t._varied)
        del backend.options["decode_rows"]
        same = [sum(x == y for x, y in zip(a, b, strict=True)) for a, b in zip(refilled, alone, strict=True)]
        failures += sum(len(prompts) - k for k in same)
        print(f"{path.name} {name} refilled: base {same[0]}/{len(prompts)}, tuned {same[1]}/{len(prompts)} "
              "equal to a batch of one", flush=True)  # fmt: skip
    return failures


if __name__ == "__main__":
    main()

"""Where a static-cache decode step's time goes on the GPU (random Gemma 4 E4B shape + LoRA):
graph replay alone, the host's stop-rule work alone, and the top CUDA kernels of one eager step.

    python3 benchmarks/gpu_decode_profile.py --root .h200
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    import gpu_gemma4_e4b as g
    import torch

    from pytest_ftgate.backends.transformers import _stable, _StaticDecoder

    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default=".h200")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--rows", type=int, default=499)
    args = parser.parse_args()
    backend, base, tuned, device = g.build(args)
    data = g.examples(args)
    bench, chosen = data["medmcqa"]
    handle = tuned.handle
    ids = [backend._ids(handle, backend._prompt(handle, bench.messages(e))) for e in chosen][: args.rows]
    with backend._active(tuned), torch.inference_mode():
        logits, mask, position, cache = backend._prefill(handle, ids)
        tokens = logits[:, -1].argmax(-1)
        dec = _StaticDecoder(handle.model, cache, mask, position, tokens, 120, graph=device == "cuda")
        dec.warm()
        dec.advance()
        dec.advance()  # capture + replay
        g.sync(device)
        start = time.perf_counter()
        for _ in range(20):
            dec.advance()
        g.sync(device)
        replay = (time.perf_counter() - start) / 20
        # host work per step at ~100 tokens per row: tolist, batch_decode, stop rule
        rows = [[int(t) for t in range(100)] for _ in ids]
        start = time.perf_counter()
        for _ in range(5):
            dec.tokens.tolist()
            texts = handle.tokenizer.batch_decode(rows, skip_special_tokens=True)
            [bench.answer_decided(_stable(t)) for t in texts]
        host = (time.perf_counter() - start) / 5
        print({"rows": len(ids), "replay_ms": round(replay * 1000, 2), "host_ms_at_100_tokens": round(host * 1000, 2)})
        dec.use_graph = False
        dec.graph = None
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
        dec._step()
        g.sync(device)
        start = time.perf_counter()
        dec._step()
        g.sync(device)
        print({"eager_step_ms": round((time.perf_counter() - start) * 1000, 1)})
        with profile(activities=activities) as prof:
            dec._step()
            g.sync(device)
        key = "cuda_time_total" if device == "cuda" else "cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=60))


if __name__ == "__main__":
    main()

"""Zero cost when unused: a GPT's forward before and after minitx.interpret touched it, timed side by side.

    python benchmarks/interpret_overhead.py

The default `train-lm` model (4 layers, width 128, block 128), batch 16, no_grad. Three models with the same
weights, interleaved round by round in one process and timed by per-thread CPU time (a shared machine makes
wall-clock comparisons across runs meaningless): `fresh` never hooked; `used` after run_with_cache and an
ablation (hooks removed again); and, for scale, a forward that caches everything. Prints the median ratios.
"""

import copy
import statistics
import time

import torch

from minitx.interpret.cache import run_with_cache, run_with_hooks
from minitx.interpret.edits import ablate_heads
from minitx.models.gpt import GPT, GPTConfig


def main(rounds: int = 30) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    fresh = GPT(GPTConfig(vocab_size=65, max_position=128)).eval()
    used = copy.deepcopy(fresh)
    ids = torch.randint(0, 65, (16, 128))
    with torch.no_grad():
        run_with_cache(used, ids)
        run_with_hooks(used, ids, hooks=ablate_heads(used, [(0, 1)]))
    times = {"fresh": [], "used": [], "cached": []}
    runs = {"fresh": lambda: fresh(ids), "used": lambda: used(ids), "cached": lambda: run_with_cache(fresh, ids)}
    with torch.no_grad():
        for fn in runs.values():
            fn()
        for _ in range(rounds):
            for name, fn in runs.items():
                began = time.thread_time()
                fn()
                times[name].append(time.thread_time() - began)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"median forward (thread CPU s): " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in med.items()))
    print(f"used / fresh = {med['used'] / med['fresh']:.3f}; run_with_cache / fresh = {med['cached'] / med['fresh']:.3f}")


if __name__ == "__main__":
    main()

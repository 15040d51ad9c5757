"""What `--compile` buys: `python benchmarks/compile_training.py` (CPU, one thread, thread-CPU clock).

minitx's default MLM training step (width 256, 4 layers, batch 16 x 128, vocab 4096, the head at labelled
positions) with its hand-written bodies eager, then compiled (`minitx.training.compile.compile_bodies`), then timed in
alternated rounds, switching the bodies between rounds. Compile time = wall time of the first compiled step
minus the median eager step. Writes results/cpu_compile.{json,md}. Run it under `flock /tmp/minitx-timing.lock`.
"""

import json
import sys
import time
from pathlib import Path

import torch

from minitx.bench.report import environment
from minitx.bench.timing import summarize
from minitx.bench.training import TrainingBenchConfig, build_impl, make_batch, make_step
from minitx.models.bert import BertForMaskedLM
from minitx.training.compile import compile_bodies, eager_bodies

RESULTS = Path(__file__).resolve().parent / "results"


def main(repeats: int = 6) -> dict:
    torch.set_num_threads(1)
    config = TrainingBenchConfig(d_model=256, n_heads=4, n_layers=4, d_ff=1024, threads=1, cpu_clock="thread")
    torch.manual_seed(0)
    model, _ = build_impl("minitx:math", BertForMaskedLM(config.model_config()), config)
    step = make_step(model, make_batch(config), config)
    eager_bodies()
    for _ in range(2):
        step()
    wall = []
    for _ in range(3):
        start = time.perf_counter()
        step()
        wall.append(time.perf_counter() - start)
    compile_bodies()
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    step()
    samples = {"eager": [], "compiled": []}
    for r in range(repeats):
        for mode in (("eager", "compiled") if r % 2 == 0 else ("compiled", "eager")):
            (compile_bodies if mode == "compiled" else eager_bodies)()
            start = time.thread_time()
            step()
            samples[mode].append((time.thread_time() - start) * 1e3)
    eager_bodies()
    stats = {mode: summarize(s).to_dict() for mode, s in samples.items()}
    paired = sorted(c / e for c, e in zip(samples["compiled"], samples["eager"]))
    doc = dict(schema="minitx.bench.compile/1", created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               environment=environment("cpu"), config=config.to_dict(), repeats=repeats,
               first_compiled_step_wall_s=first, eager_step_wall_s=sorted(wall)[1],
               compile_time_s=first - sorted(wall)[1], timings_ms=stats,
               step_time_ratio_compiled_to_eager=stats["compiled"]["median_ms"] / stats["eager"]["median_ms"],
               paired_median_ratio=paired[len(paired) // 2])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cpu_compile.json").write_text(json.dumps(doc, indent=1) + "\n")
    table = (f"minitx default MLM step, d_model 256 x 4 layers, batch 16 x 128, one thread, thread-CPU clock, "
             f"{repeats} alternated rounds; 1-min load average {doc['environment']['load_average_1min']:.1f}).\n\n"
             "| bodies | step ms (median) | IQR ms |\n|---|---|---|\n"
             + "".join(f"| {m} | {s['median_ms']:.1f} | {s['iqr_ms']:.1f} |\n" for m, s in stats.items())
             + f"\nCompile time (first compiled step minus an eager step, wall clock): {doc['compile_time_s']:.1f} s. "
               f"Steady state: compiled / eager step time = {doc['step_time_ratio_compiled_to_eager']:.3f} "
               f"(paired median {doc['paired_median_ratio']:.3f}).\n")
    (RESULTS / "cpu_compile.md").write_text(table)
    print(table)
    return doc


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 6)

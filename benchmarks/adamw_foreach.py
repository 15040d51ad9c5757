"""AdamW's multi-tensor path against its loop: `python benchmarks/adamw_foreach.py [--rounds N]`.

`minitx.training.optim.AdamW(foreach=True)` (one `torch._foreach_*` op per line of (opt.1)-(opt.2)) against
`foreach=False` (a loop over the tensors), on the parameters of GPT models of three sizes with fixed random
gradients: one thread, the thread's CPU clock, `--steps` optimizer steps per timing, rounds alternating which path
goes first, the ratio multi / loop taken within each round (median, quartiles, range). Both paths give the same
bits on a CPU (tests/test_adamw.py); this measures only what the fewer Python-side calls buy.
Writes results/adamw_foreach.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from minitx.bench.report import environment, write_json
from minitx.bench.timing import percentile
from minitx.models.gpt import GPT, GPTConfig
from minitx.training.optim import AdamW, parameter_groups

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = {"tiny (2 layers, C 32)": dict(d_model=32, n_layers=2, n_heads=2),
          "nanoGPT (4 layers, C 128)": dict(d_model=128, n_layers=4, n_heads=4),
          "wide (4 layers, C 512)": dict(d_model=512, n_layers=4, n_heads=8)}


def _spread(values: list[float]) -> dict:
    s = sorted(values)
    return {"median": percentile(s, 0.5), "p25": percentile(s, 0.25), "p75": percentile(s, 0.75),
            "min": s[0], "max": s[-1], "n": len(s)}


def run(rounds: int, steps: int) -> dict:
    torch.set_num_threads(1)
    env = environment("cpu")
    records = []
    for name, shape in MODELS.items():
        model = GPT(GPTConfig(vocab_size=65, max_position=64, **shape))
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        opts = {path: AdamW(parameter_groups(model, 0.1), lr=1e-4, foreach=path == "multi")
                for path in ("multi", "loop")}
        times = {"multi": [], "loop": []}
        for r in range(rounds + 1):  # round 0 warms up
            for path in (("multi", "loop") if r % 2 == 0 else ("loop", "multi")):
                start = time.thread_time()
                for _ in range(steps):
                    opts[path].step()
                if r:
                    times[path].append((time.thread_time() - start) / steps * 1e3)
        ratio = [a / b for a, b in zip(times["multi"], times["loop"])]
        records.append({"model": name, "tensors": sum(1 for _ in model.parameters()),
                        "parameters": sum(p.numel() for p in model.parameters()),
                        "multi_ms": _spread(times["multi"]), "loop_ms": _spread(times["loop"]),
                        "ratio": _spread(ratio)})
        print(f"{name}: multi {records[-1]['multi_ms']['median']:.3f} ms, loop {records[-1]['loop_ms']['median']:.3f} "
              f"ms, ratio {records[-1]['ratio']['median']:.3f}")
    env["load_average_1min_end"] = os.getloadavg()[0]
    return {"schema": "minitx.bench.adamw_foreach/1", "env": env, "rounds": rounds, "steps": steps,
            "clock": "thread", "records": records}


def table(doc: dict) -> str:
    env = doc["env"]
    out = [f"minitx AdamW step, multi-tensor (foreach) against the loop: thread CPU time per step, one thread, "
           f"{doc['rounds']} alternated rounds of {doc['steps']} steps; ratio per round, median [p25, p75] (min-max). "
           f"Load average {env['load_average_1min']:.1f} at the start, {env['load_average_1min_end']:.1f} at the "
           f"end ({env['cpu_count']} CPUs: a shared machine).", "",
           "| model | tensors | parameters | multi (ms) | loop (ms) | multi / loop |", "|---|---|---|---|---|---|"]
    for r in doc["records"]:
        q = r["ratio"]
        out.append(f"| {r['model']} | {r['tensors']} | {r['parameters']:,} | {r['multi_ms']['median']:.3f} | "
                   f"{r['loop_ms']['median']:.3f} | **{q['median']:.2f}x** [{q['p25']:.2f}, {q['p75']:.2f}] "
                   f"({q['min']:.2f}-{q['max']:.2f}) |")
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/adamw_foreach.py", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds (after one warm-up round)")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per timing")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where the .json and .md go")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.steps < 1:
        parser.error("--rounds, --steps: expected at least 1")
    doc = run(args.rounds, args.steps)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_json(doc, args.out_dir / "adamw_foreach.json")
    (args.out_dir / "adamw_foreach.md").write_text(table(doc))
    print(table(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

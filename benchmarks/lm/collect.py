"""Collect train-lm runs timed with `/usr/bin/time -v` into docs/results/lm_shakespeare.json (+ loss curves and
generated samples beside it), with the plain-torch reference's runs (benchmarks/lm/torch_reference.py --out).

    python benchmarks/lm/collect.py NAME=RUN_DIR:TIME_LOG ... [NAME=RUN_DIR ...] [ref=REF.json ...]

A run without a time log is recorded without time and memory (e.g. a seed sweep run two at a time); its loss
curve and sample are not copied."""

from __future__ import annotations

import json
import platform
import re
import shutil
import sys
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parents[2] / "docs" / "results"
NANOGPT = {"val_loss": 1.886, "wall_s": 151, "peak_rss_mb": 446,
           "source": "nanoGPT, config/train_shakespeare_char.py with the CPU overrides of ../shared/data/README.md, "
                     "run on the same 2-core machines (issue #13); nanoGPT README: ~1.88 in ~3 min"}


def time_v(log: Path) -> dict:
    text = log.read_text()
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)[1]
    parts = [float(p) for p in wall.split(":")]
    seconds = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    user = float(re.search(r"User time \(seconds\): ([\d.]+)", text)[1])
    system = float(re.search(r"System time \(seconds\): ([\d.]+)", text)[1])
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)[1])
    return {"wall_s": round(seconds, 1), "cpu_s": round(user + system, 1), "peak_rss_mb": round(rss / 1024)}


def main(specs: list[str]) -> None:
    runs, references = {}, []
    for spec in specs:
        name, rest = spec.split("=", 1)
        if name == "ref":
            ref = json.loads(Path(rest).read_text())
            references.append({k: ref[k] for k in ("seed", "val_loss", "val_loss_full_split", "train_loss",
                                                    "parameters", "curve") if k in ref}
                              | {"model": ref.get("model", "torch")})
            continue
        run_dir, log = (Path(p) for p in rest.split(":")) if ":" in rest else (Path(rest), None)
        summary = json.loads((run_dir / "summary.json").read_text())
        cfg = summary["config"]
        runs[name] = {**(time_v(log) if log else {}), "val_loss": round(summary["eval"]["loss"], 4),
                      "train_loss": round(summary["eval"]["train_loss"], 4),
                      "val_loss_full_split": summary["val_loss_full_split"], "steps": summary["steps"],
                      "parameters": summary["parameters"],
                      "config": {k: cfg[k] for k in ("n_layers", "n_heads", "d_model", "block_size", "batch_size",
                                                      "max_steps", "lr", "min_lr_ratio", "warmup_steps", "betas",
                                                      "weight_decay", "grad_clip", "dropout", "eval_every",
                                                      "eval_batches", "attention_backend", "threads", "seed",
                                                      "bias")},
                      "evals": [(r["step"], round(r["loss"], 4)) for r in map(json.loads, (run_dir / "metrics.jsonl")
                                .read_text().splitlines()) if r["split"] == "eval"]}
        if log and (run_dir / "sample.txt").exists():
            shutil.copy(run_dir / "loss_curve.png", OUT / f"lm_{name}_loss_curve.png")
            shutil.copy(run_dir / "sample.txt", OUT / f"lm_{name}_sample.txt")
    doc = {"reference": NANOGPT, "runs": runs, "torch_reference": references,
           "environment": {"torch": torch.__version__, "python": platform.python_version(),
                           "machine": "2 CPU cores; timed runs with nothing else running (docs/results/lm_shakespeare.md)"}}
    (OUT / "lm_shakespeare.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({k: {x: v.get(x) for x in ("val_loss", "val_loss_full_split", "wall_s", "cpu_s", "peak_rss_mb")}
                      for k, v in runs.items()}, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])

"""Llama-style vs GPT-2-style decoder on tiny Shakespeare, at the same parameter count and the same compute budget.

    python benchmarks/llama_vs_gpt.py run --setting default --budget 100 --runs gpt:0 llama:0 ... --out PART.json
    python benchmarks/llama_vs_gpt.py report PART.json ... --out benchmarks/results/llama_vs_gpt.json

The budget is CPU seconds of the one thread that trains (`time.thread_time()`, evaluations excluded), not wall
time: the machine is shared, and a thread's CPU time is what a run costs whatever else runs beside it. The
learning-rate schedule (warmup, then cosine to lr / 10, as train-lm's) follows the share of the budget spent,
so every model ends its schedule exactly when its budget ends, however fast its steps are.

Models (character vocabulary, 65 ids): `gpt` is `minitx train-lm`'s default model (GPTConfig: 4 layers, 4 heads,
width 128, biases, GELU MLP 4C, learned positions, LayerNorm). `llama` is minitx.Llama with the same
width/depth/heads: RMSNorm, SwiGLU, RoPE, grouped-query attention (2 key/value heads for 4 query heads), no
biases, tied head; its feed-forward width d_ff is chosen so its parameter count is the GPT's (to within one
d_ff step, 1.5k parameters). Each ablation puts one GPT-2 part back into the Llama (re-matching d_ff):
`llama-layernorm` (LayerNorm without shift), `llama-gelu` (GELU MLP), `llama-learned` (a learned position table
instead of RoPE), `llama-mha` (4 key/value heads, no GQA). Data: the first 90% of the text trains, the last 10%
validates; batches are random windows drawn from (seed, step), so two models with one seed see the same
batches in the same order. The final number is the loss over the whole validation split (every target once).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

from minitx.models.gpt import GPT, GPTConfig
from minitx.models.llama import Llama, LlamaConfig
from minitx.recipes.lm.recipe import compact_ids, lm_batch, shakespeare_text, split_ids, split_loss
from minitx.seeding import seed_for
from minitx.tokenizers.char import CharTokenizer
from minitx.training.optim import AdamW, parameter_groups

SETTINGS = {  # minitx train-lm's default run, and nanoGPT's shakespeare_char CPU configuration
    "default": {"block_size": 128, "batch_size": 16, "lr": 2e-3, "steps": 1600},
    "nanogpt": {"block_size": 64, "batch_size": 12, "lr": 1e-3, "steps": 2000},
}
VARIANTS = {"llama": {}, "llama-layernorm": {"norm": "layer"}, "llama-gelu": {"feed_forward": "gelu"},
            "llama-learned": {"position": "learned"}, "llama-mha": {"n_kv_heads": 0}}
WIDTH = dict(d_model=128, n_layers=4, n_heads=4)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build(name: str, vocab: int, block: int, backend: str = "sdpa") -> torch.nn.Module:
    """The model `name` at the GPT's parameter count (Llama variants: d_ff matched)."""
    gpt = GPT(GPTConfig(vocab_size=vocab, max_position=block, attention_backend=backend, **WIDTH))
    if name == "gpt":
        return gpt
    fields = {"vocab_size": vocab, "max_position": block, "attention_backend": backend, "n_kv_heads": 2,
              **WIDTH, **VARIANTS[name]}
    target = n_params(gpt)

    def count(d_ff):
        return n_params(Llama(LlamaConfig(d_ff=d_ff, n_layers=1, **{k: v for k, v in fields.items()
                                                                    if k != "n_layers"})))
    one_layer = count(2) - count(1)  # parameters per unit of d_ff in one layer
    base = n_params(Llama(LlamaConfig(d_ff=1, **fields))) - WIDTH["n_layers"] * one_layer
    d_ff = max(1, round((target - base) / (WIDTH["n_layers"] * one_layer)))
    return Llama(LlamaConfig(d_ff=d_ff, **fields))


def lr_at(fraction: float, peak: float, warmup: float) -> float:
    """train-lm's schedule (opt.5), (opt.7) over the share of the budget spent instead of the step count."""
    if fraction < warmup:
        return peak * fraction / warmup
    progress = min(1.0, (fraction - warmup) / (1.0 - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def train_one(name: str, seed: int, setting: str, budget: float, data, curve_points: int = 10) -> dict:
    s = SETTINGS[setting]
    train_ids, val_ids, vocab = data
    torch.manual_seed(seed)
    model = build(name, vocab, s["block_size"])
    optimizer = AdamW(parameter_groups(model, 0.1), lr=s["lr"], betas=(0.9, 0.99))
    warmup = 100 / s["steps"]  # train-lm's 100 warmup steps, as a share of its run
    probe = [lm_batch(val_ids, s["batch_size"], s["block_size"], seed_for(seed, -1, i, 1)) for i in range(4)]
    curve, spent, step, next_point = [], 0.0, 0, budget / curve_points
    while spent < budget:
        lr = lr_at(spent / budget, s["lr"], warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        began = time.thread_time()
        model.train()
        batch = lm_batch(train_ids, s["batch_size"], s["block_size"], seed_for(seed, step, 0, 0))
        loss = model(batch["input_ids"], targets=batch["targets"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        spent += time.thread_time() - began
        step += 1
        if not math.isfinite(float(loss.detach())):
            raise RuntimeError(f"{name} seed {seed}: non-finite loss at step {step}")
        if spent >= next_point or spent >= budget:  # evaluation time is not charged to the budget
            model.eval()
            with torch.no_grad():
                val = sum(float(model(b["input_ids"], targets=b["targets"]).loss) for b in probe) / len(probe)
            curve.append({"cpu_s": round(spent, 2), "step": step, "train_loss": round(float(loss.detach()), 4),
                          "val_loss_probe": round(val, 4)})
            next_point += budget / curve_points
    model.eval()
    full = split_loss(model, val_ids, s["block_size"])
    return {"model": name, "seed": seed, "setting": setting, "budget_cpu_s": budget, "steps": step,
            "parameters": n_params(model), "d_ff": getattr(model.config, "ff_width", None),
            "val_loss_full_split": round(full, 4), "curve": curve,
            "config": model.config.to_dict()}


def load_data():
    text = shakespeare_text()
    tokenizer = CharTokenizer.train(text)
    ids = compact_ids(tokenizer.encode(text), tokenizer.vocab_size)
    train_ids, val_ids = split_ids(ids, 0.1)
    return train_ids, val_ids, tokenizer.vocab_size


def run_main(args) -> None:
    torch.set_num_threads(1)
    data = load_data()
    out = Path(args.out)
    done = json.loads(out.read_text())["runs"] if out.is_file() else []
    for spec in args.runs:
        name, seed = spec.rsplit(":", 1)
        if any(r["model"] == name and r["seed"] == int(seed) and r["setting"] == args.setting for r in done):
            continue  # resumable: a part file keeps what it has
        record = train_one(name, int(seed), args.setting, args.budget, data)
        done.append(record)
        out.write_text(json.dumps({"runs": done}, indent=1) + "\n")
        print(json.dumps({k: record[k] for k in ("model", "seed", "steps", "parameters", "val_loss_full_split")}),
              flush=True)


def summarize(runs: list[dict]) -> list[dict]:
    """Per (setting, model): mean and spread (sample std, min, max) of the full-split validation loss."""
    rows = {}
    for r in runs:
        rows.setdefault((r["setting"], r["model"]), []).append(r)
    out = []
    for (setting, model), rs in sorted(rows.items(), key=lambda kv: (kv[0][0], list(VARIANTS).index(kv[0][1])
                                                                     if kv[0][1] in VARIANTS else -1)):
        losses = [r["val_loss_full_split"] for r in rs]
        mean = sum(losses) / len(losses)
        std = (sum((x - mean) ** 2 for x in losses) / (len(losses) - 1)) ** 0.5 if len(losses) > 1 else None
        out.append({"setting": setting, "model": model, "seeds": sorted(r["seed"] for r in rs),
                    "parameters": rs[0]["parameters"], "d_ff": rs[0]["d_ff"],
                    "steps_mean": round(sum(r["steps"] for r in rs) / len(rs)), "val_loss_mean": round(mean, 4),
                    "val_loss_std": None if std is None else round(std, 4), "val_loss_min": min(losses),
                    "val_loss_max": max(losses), "budget_cpu_s": rs[0]["budget_cpu_s"]})
    return out


def table(summary: list[dict]) -> str:
    gpt = {r["setting"]: r["val_loss_mean"] for r in summary if r["model"] == "gpt"}
    lines = ["| setting | model | seeds | parameters | d_ff | steps (mean) | val loss, whole split (mean ± std) "
             "| min - max | vs GPT |", "|---|---|---|---|---|---|---|---|---|"]
    for r in summary:
        std = "" if r["val_loss_std"] is None else f" ± {r['val_loss_std']:.4f}"
        delta = "" if r["setting"] not in gpt else f"{r['val_loss_mean'] - gpt[r['setting']]:+.4f}"
        lines.append(f"| {r['setting']} ({r['budget_cpu_s']:g} CPU-s) | {r['model']} | {len(r['seeds'])} | "
                     f"{r['parameters']:,} | {r['d_ff']} | {r['steps_mean']} | {r['val_loss_mean']:.4f}{std} | "
                     f"{r['val_loss_min']:.4f} - {r['val_loss_max']:.4f} | {delta} |")
    return "\n".join(lines)


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    settings = sorted({r["setting"] for r in runs})
    fig, axes = plt.subplots(1, len(settings), figsize=(6.5 * len(settings), 4.5), squeeze=False)
    colors = {"gpt": "tab:blue", "llama": "tab:red", "llama-layernorm": "tab:orange", "llama-gelu": "tab:green",
              "llama-learned": "tab:purple", "llama-mha": "tab:brown"}
    for ax, setting in zip(axes[0], settings):
        labelled = set()
        for r in runs:
            if r["setting"] != setting:
                continue
            xs = [p["cpu_s"] for p in r["curve"]]
            ys = [p["val_loss_probe"] for p in r["curve"]]
            ax.plot(xs, ys, color=colors.get(r["model"], "k"), alpha=0.8, lw=1.5 if r["model"] in ("gpt", "llama")
                    else 1.0, ls="-" if r["model"] in ("gpt", "llama") else "--",
                    label=None if r["model"] in labelled else r["model"])
            labelled.add(r["model"])
        ax.set_xlabel("training CPU seconds (one thread)")
        ax.set_ylabel("validation loss (4 fixed batches)")
        ax.set_title(f"tiny Shakespeare, {setting} setting")
        ax.set_ylim(top=3.0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report_main(args) -> None:
    runs = []
    for part in args.parts:
        runs += json.loads(Path(part).read_text())["runs"]
    summary = summarize(runs)
    out = Path(args.out)
    doc = {"what": __doc__.strip().splitlines()[0], "summary": summary, "runs": runs,
           "env": {"torch": torch.__version__, "python": platform.python_version(), "threads": 1,
                   "machine": platform.machine()},
           "command": "python benchmarks/llama_vs_gpt.py " + " ".join(sys.argv[1:])}
    out.write_text(json.dumps(doc, indent=1) + "\n")
    out.with_suffix(".md").write_text(table(summary) + "\n")
    plot(runs, out.with_suffix(".png"))
    print(table(summary))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--setting", choices=sorted(SETTINGS), default="default")
    r.add_argument("--budget", type=float, default=100.0, help="training CPU seconds per run (one thread)")
    r.add_argument("--runs", nargs="+", default=[f"{m}:{s}" for s in range(3) for m in ("gpt", "llama")]
                   + [f"{m}:0" for m in VARIANTS if m != "llama"])
    r.add_argument("--out", required=True)
    q = sub.add_parser("report")
    q.add_argument("parts", nargs="+")
    q.add_argument("--out", default="benchmarks/results/llama_vs_gpt.json")
    args = p.parse_args(argv)
    run_main(args) if args.cmd == "run" else report_main(args)


if __name__ == "__main__":
    main()

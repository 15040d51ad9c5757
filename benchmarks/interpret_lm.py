"""Induction heads and previous-token heads in the default Shakespeare GPT, by the standard scores, and what
ablating them does to validation loss.

    python benchmarks/interpret_lm.py [--run RUN_DIR]

Without --run it trains `minitx train-lm` with its defaults into runs/interpret/lm (a few minutes), or reuses
it. On 32 sequences of T = 50 random characters (drawn from the training text's character
frequencies) repeated once (interp.12)-(interp.14): each head's
previous-token score (attention from i to i - 1), its induction score (attention from i in the repeat to
i - T + 1), and the loss on the first half and on the repeat. Then each head is mean-ablated (interp.4) alone,
the top two induction heads together and the top two previous-token heads together (and, as a control, the two
heads with the lowest scores of both kinds): the loss on the repeat and on the validation split (the first 256
non-overlapping windows of 128 characters of the last 10 % of the text, every target once).
Writes benchmarks/results/interpret_lm.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from minitx.interpret.cache import run_with_cache, run_with_hooks
from minitx.interpret.edits import ablate_heads, mean_activation
from minitx.interpret.maps import attention_patterns
from minitx.interpret.scores import induction_scores, previous_token_scores, repeat_losses, repeated_tokens
from minitx.models.gpt import next_token_loss
from minitx.recipes.lm.generate import load_lm
from minitx.recipes.lm.recipe import shakespeare_text, split_ids

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
T, BATCH, WINDOWS = 50, 32, 256


@torch.no_grad()
def val_loss(model, windows: torch.Tensor, targets: torch.Tensor, hooks=None) -> float:
    total = 0.0
    for i in range(0, len(windows), 32):
        logits = run_with_hooks(model, windows[i:i + 32], hooks=hooks).logits
        total += float(next_token_loss(logits, targets[i:i + 32])) * len(windows[i:i + 32])
    return total / len(windows)


@torch.no_grad()
def analyse(run: Path) -> tuple[dict, torch.Tensor, torch.Tensor]:
    model, tokenizer = load_lm(run)
    block = model.config.max_position
    ids = torch.tensor(tokenizer.encode(shakespeare_text()))
    train, val = split_ids(ids, 0.1)
    n = min(WINDOWS, (len(val) - 1) // block)
    windows, targets = val[:n * block].view(n, block), val[1:n * block + 1].view(n, block)
    # T characters drawn from the training split's character frequencies, then the same T again. Uniform random
    # characters (repeated_tokens) are far off this model's distribution ('$', '&', digits): its loss on them
    # is above log V, on the first half and on the repeat alike, and no head reacts to them.
    frequency = torch.bincount(train, minlength=model.config.vocab_size).double()
    first = torch.multinomial(frequency, BATCH * T, replacement=True, generator=torch.Generator().manual_seed(0))
    rep = first.view(BATCH, T).repeat(1, 2)  # (B, 2T)
    uniform = repeated_tokens(model.config.vocab_size, T, BATCH, seed=0)
    with torch.no_grad():
        uniform_losses = repeat_losses(model(uniform).logits, uniform, T)
    starts = torch.randint(len(val) - T, (BATCH,), generator=torch.Generator().manual_seed(1))
    text = val[starts[:, None] + torch.arange(T)].long().repeat(1, 2)  # (B, 2T): real validation text, twice
    with torch.no_grad():
        _, text_cache = run_with_cache(model, text, names=lambda n: n.endswith("pattern"))
    text_induction = induction_scores(attention_patterns(text_cache), T)
    out, cache = run_with_cache(model, rep)
    patterns = attention_patterns(cache)  # (L, B, H, 2T, 2T)
    induction, previous = induction_scores(patterns, T), previous_token_scores(patterns)
    L, H = induction.shape
    means = {layer: mean_activation(model, f"blocks.{layer}.attention.z", windows[:64]) for layer in range(L)}

    def measure(heads):
        hooks = ablate_heads(model, heads, means) if heads else None
        first, second = repeat_losses(run_with_hooks(model, rep, hooks=hooks).logits, rep, T)
        text_first, text_second = repeat_losses(run_with_hooks(model, text, hooks=hooks).logits, text, T)
        return {"val_loss": val_loss(model, windows, targets, hooks), "repeat_first_half": first,
                "repeat_second_half": second, "text_first_half": text_first, "text_second_half": text_second}

    def top(scores, k=2, largest=True):
        order = scores.flatten().argsort(descending=largest)[:k]
        return [divmod(int(i), H) for i in order]
    groups = {"none": [], "top-2 induction": top(induction), "top-2 previous-token": top(previous),
              "control: 2 lowest (induction + previous)": top(induction + previous, largest=False)}
    table = {name: {"heads": [f"L{l}H{h}" for l, h in heads], **measure(heads)} for name, heads in groups.items()}
    for layer in range(L):
        for head in range(H):
            table[f"L{layer}H{head}"] = {"heads": [f"L{layer}H{head}"], **measure([(layer, head)])}
    best = top(induction, 1)[0]
    result = {"run": str(run), "T": T, "batch": BATCH, "val_windows": n, "block_size": block,
              "vocab_size": model.config.vocab_size, "log_vocab": math.log(model.config.vocab_size),
              "induction": induction.tolist(), "previous_token": previous.tolist(), "ablation": table,
              "uniform_random_repeat_losses": list(uniform_losses), "text_induction": text_induction.tolist()}
    return result, patterns[best[0], 0, best[1]], patterns[top(previous, 1)[0][0], 0, top(previous, 1)[0][1]]


def figure(result: dict, induction_pattern: torch.Tensor, previous_pattern: torch.Tensor, path: Path) -> None:
    from matplotlib.figure import Figure
    fig = Figure(figsize=(14, 3.8), layout="constrained")
    axes = fig.subplots(1, 4)
    for ax, key, title in ((axes[0], "induction", "induction score (interp.13)"),
                           (axes[1], "previous_token", "previous-token score (interp.12)")):
        t = torch.tensor(result[key])
        im = ax.imshow(t.numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
        for l in range(t.shape[0]):
            for h in range(t.shape[1]):
                ax.text(h, l, f"{float(t[l, h]):.2f}", ha="center", va="center", fontsize=7,
                        color="white" if float(t[l, h]) < 0.5 else "black")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(t.shape[1]))
        ax.set_yticks(range(t.shape[0]))
        fig.colorbar(im, ax=ax, shrink=0.7)
    best_i, best_p = result["ablation"]["top-2 induction"]["heads"][0], result["ablation"]["top-2 previous-token"]["heads"][0]
    for ax, pattern, name in ((axes[2], induction_pattern, f"{best_i}, top induction score"),
                              (axes[3], previous_pattern, f"{best_p}, top previous-token score")):
        ax.imshow(pattern.numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
        ax.set_title(f"{name}\n({result['T']} random characters, twice)", fontsize=8)
        ax.set_xlabel("key")
        ax.set_ylabel("query")
    fig.savefig(path, dpi=100)


def markdown(result: dict) -> str:
    rows = result["ablation"]
    lines = ["# Induction and previous-token heads in the default Shakespeare GPT", "",
             f"Written by `python benchmarks/interpret_lm.py` (the run: `minitx train-lm`, defaults). Scores on "
             f"{result['batch']} sequences of T = {result['T']} random characters (i.i.d. from the training text's "
             f"character frequencies), repeated once; "
             f"validation loss on the first {result['val_windows']} windows of {result['block_size']} characters "
             f"of the validation split (nats per character). A head is mean-ablated (interp.4). log V = "
             f"{result['log_vocab']:.2f} (uniform over {result['vocab_size']} characters). On *uniform* random "
             f"characters, far off its distribution, the model's loss is "
             f"{result['uniform_random_repeat_losses'][0]:.2f} on the first half and "
             f"{result['uniform_random_repeat_losses'][1]:.2f} on the repeat: no copying at all there.", "",
             f"The last two columns repeat {result['batch']} windows of {result['T']} characters of real validation "
             "text instead.", "",
             "| ablated | heads | val loss | random: first half | random: repeat | text: first half | text: repeat |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        bold = "**" if not name.startswith("L") else ""
        lines.append(f"| {bold}{name}{bold} | {' + '.join(r['heads']) or '-'} | {r['val_loss']:.4f} | "
                     f"{r['repeat_first_half']:.3f} | {r['repeat_second_half']:.3f} | {r['text_first_half']:.3f} | "
                     f"{r['text_second_half']:.3f} |")
    lines += ["", "Scores per head (rows: layers; each cell: the layer's heads 0-3):", "",
              "| layer | induction (random) | induction (text repeated) | previous token (random) |", "|---|---|---|---|"]
    for layer, (i, t, p) in enumerate(zip(result["induction"], result["text_induction"], result["previous_token"])):
        lines.append(f"| {layer} | {' '.join(f'{v:.2f}' for v in i)} | {' '.join(f'{v:.2f}' for v in t)} | "
                     f"{' '.join(f'{v:.2f}' for v in p)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=None, help="a train-lm run directory (default: train one with defaults)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    run = Path(args.run) if args.run else ROOT / "runs" / "interpret" / "lm"
    if not (run / "checkpoint.pt").is_file():
        subprocess.run([sys.executable, "-m", "minitx", "train-lm", "--out-dir", str(run), "--no-progress"],
                       check=True, cwd=ROOT)
    began = time.perf_counter()
    result, induction_pattern, previous_pattern = analyse(run)
    result["meta"] = {"analysis_s": round(time.perf_counter() - began, 1), "load_average": os.getloadavg(),
                      "torch": torch.__version__, "machine": platform.machine()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "interpret_lm.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "interpret_lm.md").write_text(markdown(result))
    figure(result, induction_pattern, previous_pattern, RESULTS / "interpret_lm.png")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

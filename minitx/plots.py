"""Matplotlib figures shared by lessons, benchmarks and the CLI.

Every function returns the `Figure` and, given `path`, saves it there (PNG), so a lesson can show it and a test
can check that it was written. The backend is left alone inside IPython/Jupyter (the notebook's inline backend
shows the figures) and whenever `MPLBACKEND` is set; only a plain script with no display falls back to Agg.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Sequence

import matplotlib


def in_notebook() -> bool:
    """True inside IPython or a Jupyter kernel (Colab, VS Code, JupyterLab): an IPython shell is running."""
    ipython = sys.modules.get("IPython")
    return ipython is not None and getattr(ipython, "get_ipython", lambda: None)() is not None


def _wants_agg() -> bool:
    """A plain script on a machine without a display: Agg, so saving figures never needs a window system."""
    if in_notebook() or os.environ.get("MPLBACKEND"):
        return False
    return sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


if _wants_agg():
    matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def lesson_dir() -> Path:
    """The folder of the running lesson: the script's own folder, or in a notebook the working directory
    (Jupyter, VS Code and nbclient start a notebook's kernel in the notebook's folder). No `__file__` needed."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if main_file and not in_notebook():
        return Path(main_file).resolve().parent
    return Path.cwd()


def output_dir(default: str | os.PathLike | None = None) -> Path:
    """Where lessons and demos write figures: `$MINITX_OUTPUT_DIR`, else `default`, else `output/` next to the
    running lesson (`lessons/output/`, git-ignored, wherever the lesson was started from); created if missing."""
    path = Path(os.environ.get("MINITX_OUTPUT_DIR") or default or lesson_dir() / "output")
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_figure(fig: plt.Figure, path: str | os.PathLike | None) -> plt.Figure:
    """Lay `fig` out (tight, unless it was made with a layout engine) and, with a `path`, save it there as a
    PNG at 110 dpi, making the folder; returns `fig`. Every figure minitx writes ends here."""
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig


def attention_map(weights: torch.Tensor, queries: Sequence[str] | None = None, keys: Sequence[str] | None = None,
                  title: str = "attention weights", path: str | os.PathLike | None = None) -> plt.Figure:
    """Heatmap of one (N, M) weight matrix, or a row of heads for (H, N, M)."""
    w = weights.detach().float().cpu()
    if w.dim() == 2:
        w = w.unsqueeze(0)  # (N, M) -> (1, N, M)
    if w.dim() != 3:
        raise ValueError(f"weights: expected shape (N, M) or (H, N, M), got {tuple(weights.shape)}")
    n_heads = w.shape[0]
    # constrained layout leaves room for a colorbar shared by all heads (tight_layout would overlap it)
    fig, axes = plt.subplots(1, n_heads, figsize=(3.2 * n_heads + 0.8, 3.4), squeeze=False, layout="constrained")
    for h, ax in enumerate(axes[0]):
        im = ax.imshow(w[h].numpy(), cmap="viridis", vmin=0.0, vmax=float(w.max()))
        ax.set_title(title if n_heads == 1 else f"{title}, head {h}", fontsize=9)
        ax.set_xlabel("key")
        ax.set_ylabel("query")
        if keys is not None:
            ax.set_xticks(range(len(keys)), keys, rotation=90, fontsize=7)
        if queries is not None:
            ax.set_yticks(range(len(queries)), queries, fontsize=7)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    return save_figure(fig, path)


def heatmap(values: torch.Tensor, xlabel: str, ylabel: str, title: str,
            path: str | os.PathLike | None = None, cmap: str = "RdBu") -> plt.Figure:
    """A plain 2-D heatmap (positional encodings, similarity matrices)."""
    v = values.detach().float().cpu().numpy()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    im = ax.imshow(v, aspect="auto", cmap=cmap)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.colorbar(im, ax=ax)
    return save_figure(fig, path)


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics JSONL file, one dict per line."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def loss_curve(records: Sequence[dict], keys: Sequence[str] = ("loss",), title: str = "training",
               path: str | os.PathLike | None = None, x_key: str = "step") -> plt.Figure:
    """One line per metric key against `x_key`, from metric records (e.g. `read_metrics(...)`)."""
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), squeeze=False)
    for key, ax in zip(keys, axes[0]):
        for split in sorted({r.get("split", "train") for r in records}):
            pts = [(r[x_key], r[key]) for r in records if key in r and r.get("split", "train") == split]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="." if len(pts) < 40 else None, label=split)
        ax.set_xlabel(x_key)
        ax.set_ylabel(key)
        ax.set_title(f"{title}: {key}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path)


# --- accuracy_vs_chance (pretraining recipe, lesson 06) ---
def accuracy_vs_chance(per_kind: dict[str, tuple[float, float]], title: str = "accuracy vs chance",
                       path: str | os.PathLike | None = None) -> plt.Figure:
    """Grouped bars: {kind: (accuracy, chance)}, e.g. MLM probe accuracy per kind of determined position."""
    kinds = list(per_kind)
    xs = range(len(kinds))
    fig, ax = plt.subplots(figsize=(1.4 * len(kinds) + 2.4, 3.2))
    ax.bar([x - 0.2 for x in xs], [per_kind[k][0] for k in kinds], width=0.4, label="model")
    ax.bar([x + 0.2 for x in xs], [per_kind[k][1] for k in kinds], width=0.4, label="chance", color="0.7")
    for x, k in zip(xs, kinds):
        ax.text(x - 0.2, per_kind[k][0] + 0.01, f"{per_kind[k][0]:.0%}", ha="center", fontsize=8)
    ax.set_xticks(list(xs), kinds)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: never covers a bar
    return save_figure(fig, path)


# --- flash attention tiling (owner: flash attention kernel, docs/math/flash_attention.md (flash.12)) ---
def flash_tiling(n: int, m: int, block_n: int, block_m: int, causal: bool = True,
                 title: str | None = None, path: str | os.PathLike | None = None) -> plt.Figure:
    """The tiles of the (N, M) score matrix one FlashAttention forward visits.

    Dark: computed with no mask needed; light: straddles the causal diagonal or the end of a sequence, masked
    element by element; white: never loaded, because it lies wholly above the causal diagonal (flash.12).
    """
    from matplotlib.patches import Rectangle

    fig, ax = plt.subplots(figsize=(5.2, 5.2 * n / max(m, 1) + 0.6))
    for n0 in range(0, n, block_n):
        key_end = min(m, n0 + block_n) if causal else m  # (flash.12): the loop bound of this program
        for m0 in range(0, m, block_m):
            visited = m0 < key_end
            needs_mask = (n0 + block_n > n or m0 + block_m > m
                          or (causal and m0 + block_m - 1 > n0))  # some (i, j) in the tile has j > i
            color = "white" if not visited else ("#9ecae1" if needs_mask else "#3182bd")
            ax.add_patch(Rectangle((m0, n0), min(block_m, m - m0), min(block_n, n - n0),
                                   facecolor=color, edgecolor="black", linewidth=0.8))
    for color, label in (("#3182bd", "computed"), ("#9ecae1", "computed, masked"), ("white", "skipped")):
        ax.add_patch(Rectangle((0, 0), 0, 0, facecolor=color, edgecolor="black", label=label))
    if causal:
        ax.plot([0, min(n, m)], [0, min(n, m)], color="crimson", linewidth=1.5, label="j = i")
    ax.legend(loc="upper right", fontsize=8, framealpha=0.95)
    ax.set_xlim(0, m)
    ax.set_ylim(n, 0)
    ax.set_aspect("equal")
    ax.set_xlabel(f"key j (tiles of {block_m})")
    ax.set_ylabel(f"query i (tiles of {block_n}); one program per row of tiles")
    ax.set_title(title or f"FlashAttention tiles, N={n}, M={m}" + (", causal" if causal else ""), fontsize=10)
    return save_figure(fig, path)


# --- fine-tuning methods compared (owner: finetune recipe, benchmarks/peft_experiment.py, lesson 07) ---
def method_accuracy(accuracies: dict[str, dict[str, Sequence[float]]], chance: float | None = 0.5,
                    title: str = "test accuracy by method", path: str | os.PathLike | None = None) -> plt.Figure:
    """Grouped bars: {label budget: {method: [accuracy per seed]}} -> one group per method, one bar per budget,
    the bar at the mean, a line for ± one standard deviation, and a dot per seed (few seeds: show them all)."""
    budgets = list(accuracies)
    methods = list(dict.fromkeys(m for b in budgets for m in accuracies[b]))
    width = 0.8 / max(len(budgets), 1)
    fig, ax = plt.subplots(figsize=(1.3 * len(methods) + 2.4, 3.6))
    for i, budget in enumerate(budgets):
        xs = [j + (i - (len(budgets) - 1) / 2) * width for j in range(len(methods))]
        values = [torch.tensor(list(accuracies[budget].get(m, [])), dtype=torch.float64) for m in methods]
        means = [float(v.mean()) if len(v) else float("nan") for v in values]
        stds = [float(v.std()) if len(v) > 1 else 0.0 for v in values]
        ax.bar(xs, means, width * 0.9, yerr=stds, capsize=3, label=str(budget), alpha=0.85)
        for x, v in zip(xs, values):
            ax.scatter([x] * len(v), v.tolist(), s=9, color="black", zorder=3)
    if chance is not None:
        ax.axhline(chance, color="gray", linestyle="--", linewidth=1, label="chance")
    ax.set_xticks(range(len(methods)), methods, rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test accuracy")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return save_figure(fig, path)

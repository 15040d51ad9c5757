"""Figures of what a model does on one input: every head's attention (interp.1), the rollout (interp.3) and the
logit lens (interp.7). Drawn on a bare `matplotlib.figure.Figure` (no pyplot, no display, no global state) and
saved as PNG when given a path; each function returns the Figure."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from matplotlib.figure import Figure


def _save(fig: Figure, path: str | os.PathLike | None) -> Figure:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    return fig


def _ticks(ax, tokens: Sequence[str] | None, n: int) -> None:
    if tokens is not None and n <= 64:
        ax.set_xticks(range(n), tokens, rotation=90, fontsize=6)
        ax.set_yticks(range(n), tokens, fontsize=6)
    else:
        ax.set_xticks([])
        ax.set_yticks([])


def attention_grid(patterns: torch.Tensor, tokens: Sequence[str] | None = None, title: str = "attention",
                   path: str | os.PathLike | None = None) -> Figure:
    """One panel per layer (rows) and head (columns) of one input's patterns (L, H, N, M): query down, key across."""
    if not isinstance(patterns, torch.Tensor) or patterns.dim() != 4:
        raise ValueError(f"patterns: expected (L, H, N, M) for one input, got "
                         f"{tuple(patterns.shape) if isinstance(patterns, torch.Tensor) else type(patterns).__name__}")
    n_layers, n_heads, n, _ = patterns.shape
    size = 1.6 if n <= 24 else 2.2
    fig = Figure(figsize=(size * n_heads + 1, size * n_layers + 0.6), layout="constrained")
    axes = fig.subplots(n_layers, n_heads, squeeze=False)
    w = patterns.detach().float().cpu()
    for layer in range(n_layers):
        for head in range(n_heads):
            ax = axes[layer][head]
            ax.imshow(w[layer, head].numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
            ax.set_title(f"L{layer} H{head}", fontsize=7)
            _ticks(ax, tokens if n_heads * n <= 200 else None, n)
    fig.suptitle(f"{title}: query (rows) -> key (columns)", fontsize=9)
    return _save(fig, path)


def rollout_figure(rollout: torch.Tensor, tokens: Sequence[str] | None = None,
                   path: str | os.PathLike | None = None) -> Figure:
    """The rollout (N, N) of one input: row i, how much token i's final state draws on each input token."""
    fig = Figure(figsize=(5.5, 5), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(rollout.detach().float().cpu().numpy(), cmap="viridis", vmin=0.0)
    _ticks(ax, tokens, rollout.shape[-1])
    ax.set_xlabel("input token")
    ax.set_ylabel("position after the last block")
    ax.set_title("attention rollout (Abnar & Zuidema, 2020)", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return _save(fig, path)


def logit_lens_figure(lens_logits: torch.Tensor, tokens: Sequence[str], decode, title: str = "logit lens",
                      path: str | os.PathLike | None = None) -> Figure:
    """(L + 1, N, V) logits of one input read after each block: each cell shows the top token (`decode(id)`) and
    is coloured by its probability; the rows are the embeddings and the blocks' outputs."""
    probs = lens_logits.detach().float().softmax(-1).cpu()
    top_p, top = probs.max(-1)  # (L + 1, N)
    rows, n = top.shape
    fig = Figure(figsize=(max(4.0, 0.45 * n + 1.5), 0.45 * rows + 1.2), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(top_p.numpy(), cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    for r in range(rows):
        for i in range(n):
            ax.text(i, r, repr(decode(int(top[r, i])))[1:-1][:6], ha="center", va="center", fontsize=6,
                    color="white" if top_p[r, i] > 0.6 else "black")
    ax.set_yticks(range(rows), ["embed"] + [f"block {i}" for i in range(rows - 1)], fontsize=7)
    ax.set_xticks(range(n), [repr(t)[1:-1] for t in tokens], rotation=90, fontsize=6)
    ax.set_xlabel("input position (the cell: the top prediction there)")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8, label="probability of the top token")
    return _save(fig, path)

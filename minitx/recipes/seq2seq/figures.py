"""The cross-attention picture: for each output token, where in the source the decoder looked (tf.4)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from minitx.generation.generate import generate
from minitx.hooks import using_hooks
from minitx.models.transformer import Transformer
from minitx.plots import save_figure  # importing minitx.plots also selects a headless backend


@torch.no_grad()
def cross_attention_maps(model: Transformer, vocab, source: str, layer: int = -1) -> tuple[torch.Tensor, list[str],
                                                                                          list[str]]:
    """Greedy-decode `source`, then rerun the decoder on its own output with a hook on one layer's
    cross-attention weights. Returns (weights averaged over heads (T, S), output tokens, source tokens)."""
    model.eval()
    src = torch.tensor([vocab.encode(source)])
    out = generate(model, src, model.config.max_position - 1, temperature=0)  # (1, 1 + T)
    layer = layer % len(model.decoder)
    seen = {}

    def keep(weights, name):
        seen["w"] = weights
    with using_hooks(model, {f"decoder.{layer}.cross_attention.pattern": keep}):
        model(src, out[:, :-1])
    weights = seen["w"][0].mean(0)  # (H, T, S) -> (T, S)
    produced = [vocab.tokens[i] for i in out[0, 1:].tolist()]
    return weights, produced, [vocab.tokens[i] for i in src[0].tolist()]


def cross_attention_figure(model: Transformer, vocab, sources: Sequence[str], path: str | Path | None = None,
                           layer: int = -1):
    """One panel per source: rows are the output tokens, columns the source characters."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(sources), figsize=(4.2 * len(sources), 3.6), squeeze=False, layout="constrained")
    for ax, source in zip(axes[0], sources):
        weights, produced, keys = cross_attention_maps(model, vocab, source, layer)
        ax.imshow(weights.numpy(), cmap="viridis", vmin=0.0, aspect="auto")
        ax.set_xticks(range(len(keys)), [k if k.strip() else "␣" for k in keys], fontsize=7)
        ax.set_yticks(range(len(produced)), produced, fontsize=7)
        ax.set_xlabel("source")
        ax.set_ylabel("output")
        ax.set_title(f"{source!r}", fontsize=8)
    fig.suptitle("cross-attention of the last decoder layer (mean over heads)", fontsize=9)
    save_figure(fig, path)
    plt.close(fig)
    return fig

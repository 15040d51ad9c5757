"""Looking inside a model: activation caches, edits on the way (ablation, patching), and the methods built on
them. Everything here runs on the hook points of the composable Block (`minitx.hooks`), so any model built
from Blocks works; docs/math/interpretability.md holds the equations (interp.*).

    cache.py      run_with_cache, run_with_hooks, ActivationCache, block_stacks: read every activation
    edits.py      ablate_heads, ablate_neurons, patch_from, mean_activation: hooks that change activations
    maps.py       attention_patterns, attention_rollout
    lens.py       readout, logit_lens, direct_logit_attribution (pre-LN decoders)
    patching.py   patch_heads, patch_residual, ablate_each_head: a metric per layer/head/position
    probes.py     fit_probe: a linear probe on cached activations
    scores.py     repeated_tokens, induction_scores, previous_token_scores, repeat_losses
    figures.py    attention_grid, rollout_figure, logit_lens_figure (PNG through matplotlib's Figure)
    page.py       attention_page: a self-contained HTML page to pick a layer and a head

The main entry points are reachable here too: `minitx.interpret.run_with_cache(model, ids)`.
"""

from __future__ import annotations

import importlib

_NAMES = {"run_with_cache": "minitx.interpret.cache", "run_with_hooks": "minitx.interpret.cache",
          "ActivationCache": "minitx.interpret.cache", "ablate_heads": "minitx.interpret.edits",
          "ablate_neurons": "minitx.interpret.edits", "patch_from": "minitx.interpret.edits",
          "attention_rollout": "minitx.interpret.maps", "logit_lens": "minitx.interpret.lens",
          "direct_logit_attribution": "minitx.interpret.lens", "patch_heads": "minitx.interpret.patching",
          "fit_probe": "minitx.interpret.probes"}
__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name not in _NAMES:
        raise AttributeError(f"module 'minitx.interpret' has no attribute {name!r}")
    return getattr(importlib.import_module(_NAMES[name]), name)

"""Seeds as pure functions of where a run is, so the same seed gives the same run and a resumed run continues
exactly (DESIGN.md: randomness). Two kinds: `seed_for` mixes any indices through a hash, for data generators
(batches, shards, permutations); `step_seed` is the torch seed of one training micro-step's dropout.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any, Mapping

import numpy as np
import torch


def seed_for(*parts: int) -> int:
    """A 63-bit seed mixing (seed, step, rank, ...): nearby inputs give unrelated streams."""
    digest = hashlib.blake2b(repr(tuple(int(p) for p in parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def seed_everything(seed: int) -> None:
    """Seed every generator a recipe might draw from: torch (CPU and CUDA), Python's random, numpy."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def step_seed(seed: int, step: int, micro_step: int, rank: int) -> int:
    """The torch seed for one micro-step's dropout: a pure function of where we are, so a resumed run draws
    exactly the masks the uninterrupted run drew, and ranks draw different ones."""
    return (((seed * 1_000_003 + step) * 1_009 + micro_step) * 65_537 + rank) % (2**63 - 1)


# Every generator's state, saved in checkpoints (minitx.training.checkpoint) so a resumed run draws what it would have.
def rng_state() -> dict[str, Any]:
    """Every random number generator a training step may draw from, as weights_only-loadable values."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": _to_lists(random.getstate()),
        # numpy's key is a uint32 array; a list of ints keeps the file free of numpy objects.
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuples(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x: Any) -> Any:
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x

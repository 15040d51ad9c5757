"""Seeds as pure functions of where a run is, so the same seed gives the same run and a resumed run continues
exactly (DESIGN.md: randomness). Two kinds: `seed_for` mixes any indices through a hash, for data generators
(batches, shards, permutations); `step_seed` is the torch seed of one training micro-step's dropout.
"""

from __future__ import annotations

import hashlib
import random

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

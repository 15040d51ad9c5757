# %% [markdown]
# # Solutions to lesson 03's exercises

# %%
import math

import torch

from minitx.positional.absolute import SinusoidalPositionalEncoding
from minitx.positional.alibi import alibi_slopes
from minitx.positional.rope import RotaryEmbedding


# %% [markdown]
# **1.** (adapter **sinusoidal_positions**)

# %%
def sinusoidal_positions(n_positions, d_model):
    pos = torch.arange(n_positions, dtype=torch.float32)[:, None]
    freq = 10000.0 ** (-torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)  # (d_model / 2,)
    table = torch.zeros(n_positions, d_model)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : d_model // 2]
    return table


ref = SinusoidalPositionalEncoding(32, max_len=50)(torch.zeros(1, 50, 32))[0]
torch.testing.assert_close(sinusoidal_positions(50, 32), ref)


# %% [markdown]
# **2.** (adapter **rope**): dimension $i$ pairs with $i + D/2$ ("rotate half").

# %%
def rope(x, positions, theta=10000.0):
    d = x.shape[-1]
    inv = theta ** (-torch.arange(0, d // 2, dtype=torch.float64) / (d // 2))  # (D/2,)
    angles = positions.double()[:, None] * inv[None]                           # (N, D/2)
    cos, sin = (torch.cat([f(angles)] * 2, -1).to(x.dtype) for f in (torch.cos, torch.sin))  # (N, D)
    half = torch.cat([-x[..., d // 2:], x[..., : d // 2]], -1)
    return x * cos + half * sin


q, k = torch.randn(1, 1, 1, 16, dtype=torch.float64), torch.randn(1, 1, 1, 16, dtype=torch.float64)
P = torch.arange(20)
scores = (rope(q.expand(1, 1, 20, 16), P) @ rope(k.expand(1, 1, 20, 16), P).transpose(-2, -1))[0, 0]
for offset in (-3, 0, 5):
    diag = torch.diagonal(scores, offset=offset)
    assert (diag - diag[0]).abs().max() < 1e-9
torch.testing.assert_close(rope(q.expand(1, 1, 20, 16), P), RotaryEmbedding(16).rotate(q.expand(1, 1, 20, 16), P))
print("sinusoidal table and RoPE by hand == minitx")

# %% [markdown]
# **3.** 6 is not a power of two: take the 4-head sequence $2^{-2}, 2^{-4}, 2^{-6}, 2^{-8}$ and add every other
# slope of the 8-head sequence, $2^{-1}, 2^{-3}$.

# %%
predicted = [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8, 2.0 ** -1, 2.0 ** -3]
assert all(math.isclose(a, b) for a, b in zip(alibi_slopes(6).tolist(), predicted)), alibi_slopes(6)
print("ALiBi, 6 heads:", alibi_slopes(6).tolist())

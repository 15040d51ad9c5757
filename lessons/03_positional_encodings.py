# %% [markdown]
# # Lesson 03: positional encodings
#
# Self-attention has no idea of order: permute the tokens and the outputs are permuted the same way. This
# lesson shows that, then four ways to put order in (docs/math/positional.md): a fixed sinusoidal table
# (pos.1), a learned table (pos.2), rotary embeddings that make scores depend only on relative offsets
# (pos.3)-(pos.6), and ALiBi's distance penalty on the scores (pos.7)-(pos.8).

# %%
import math
import os

import torch

from minitx.attention.multi_head import MultiHeadAttention
from minitx.plots import heatmap, output_dir
from minitx.positional.absolute import LearnedPositionalEmbedding, SinusoidalPositionalEncoding
from minitx.positional.alibi import alibi_bias, alibi_slopes
from minitx.positional.rope import RotaryEmbedding

FAST = os.environ.get("MINITX_FAST") == "1"
torch.manual_seed(0)
OUT = output_dir()

# %% [markdown]
# ## Attention alone is blind to order
#
# "dog bites man" and "man bites dog" get the same outputs, only shuffled.

# %%
mha = MultiHeadAttention(16, 4).eval()
x = torch.randn(1, 3, 16)  # embeddings of: dog, bites, man
swapped = x[:, [2, 1, 0]]  # man, bites, dog
torch.testing.assert_close(mha(swapped), mha(x)[:, [2, 1, 0]])
print("without positions: outputs just follow the permutation")

# %% [markdown]
# ## Sinusoidal
#
# $PE(p, 2i) = \sin(p / 10000^{2i/C})$, $PE(p, 2i+1) = \cos(p / 10000^{2i/C})$ (pos.1): a bank of clocks at
# geometrically spaced frequencies. Adding it breaks the symmetry.

# %%
C, L = 64, 128 if FAST else 512
sin_pe = SinusoidalPositionalEncoding(C, max_len=L)
table = sin_pe(torch.zeros(1, L, C))[0]  # adding to zeros reads the table out, (L, C)
p, i = 37, 5
assert abs(table[p, 2 * i].item() - math.sin(p / 10000 ** (2 * i / C))) < 1e-6
assert abs(table[p, 2 * i + 1].item() - math.cos(p / 10000 ** (2 * i / C))) < 1e-6
heatmap(table.T, xlabel="position p", ylabel="channel", title="sinusoidal encoding PE(p, c)",
        path=OUT / "03_sinusoidal.png")

with_pos = SinusoidalPositionalEncoding(16, max_len=8)
assert not torch.allclose(mha(with_pos(swapped)), mha(with_pos(x))[:, [2, 1, 0]], atol=1e-4)
print("with positions added, swapping words changes the outputs")

# %% [markdown]
# A property worth seeing: $PE(p)\cdot PE(p+k) = \sum_i \cos(k\,\omega_i)$, a function of the offset $k$
# alone. Each row of the similarity matrix is the previous one shifted.

# %%
similarity = table @ table.T  # (L, C) @ (C, L) -> (L, L)
for k in (1, 5, 20):
    diagonal = torch.diagonal(similarity, offset=k)
    assert (diagonal - diagonal[0]).abs().max() < 1e-3, "similarity depends on the offset only"

# %% [markdown]
# ## Learned
#
# BERT simply learns a table $E \in \mathbb{R}^{L\times C}$ (pos.2). It starts random and small and can
# represent anything — but only for the $L$ positions it was trained on.

# %%
learned = LearnedPositionalEmbedding(L, C)
torch.testing.assert_close(learned(torch.zeros(1, 10, C))[0], learned.weight[:10].detach())
print(f"learned table: {tuple(learned.weight.shape)}, std {learned.weight.std():.3f}")

# %% [markdown]
# ## Rotary (RoPE)
#
# RoPE rotates queries and keys instead of adding to the input. minitx pairs dimension $i$ with $i + D/2$
# ("split halves", as GPT-NeoX and Hugging Face Llama). Rotating $q$ by $p\theta$ and $k$ by $p'\theta$ makes
# their dot product depend on $p - p'$ only (pos.6). We check it by tabulating the score of one fixed
# $(q, k)$ pair placed at every pair of positions: the table must be constant along its diagonals.

# %%
D, P = 32, 48 if FAST else 128
rope = RotaryEmbedding(D)
q = torch.randn(1, 1, 1, D, dtype=torch.float64)
k = torch.randn(1, 1, 1, D, dtype=torch.float64)
positions = torch.arange(P)
q_at = rope.rotate(q.expand(1, 1, P, D), positions)  # the same q at positions 0..P-1, (1, 1, P, D)
k_at = rope.rotate(k.expand(1, 1, P, D), positions)
scores = (q_at @ k_at.transpose(-2, -1))[0, 0]  # (P, P): score of q at row position, k at column position
for offset in (-7, 0, 3, 20):
    diagonal = torch.diagonal(scores, offset=offset)
    assert (diagonal - diagonal[0]).abs().max() < 1e-9, "RoPE scores depend on the offset only"
torch.testing.assert_close(q_at.norm(dim=-1), q.norm(dim=-1).expand(1, 1, P))  # rotations keep norms
heatmap(scores, xlabel="key position p'", ylabel="query position p", title="RoPE: <R(p)q, R(p')k>",
        path=OUT / "03_rope_relative.png")
print("RoPE: every diagonal of the score table is constant")

# %% [markdown]
# ## ALiBi
#
# No embedding at all: head $h$ adds $-m_h |j - i|$ to its scores (pos.8), with slopes $m_h$ a geometric
# sequence (pos.7). Steep heads look locally, shallow heads far away.

# %%
slopes = alibi_slopes(8)
assert slopes.tolist() == [2.0 ** -e for e in range(1, 9)]
bias = alibi_bias(8, 16, 16)  # (H, N, M)
assert bias[0, 10, 3].item() == -0.5 * 7
heatmap(torch.cat([bias[0], bias[3], bias[7]], dim=1), xlabel="key j (heads 0 | 3 | 7)", ylabel="query i",
        title="ALiBi bias  -m_h |j - i|", path=OUT / "03_alibi.png", cmap="viridis")

# %% [markdown]
# The geometric sequence $m_h = 2^{-8h/H}$ is defined for $H$ a power of two. For other head counts the
# ALiBi authors' rule takes the 8 slopes of $H = 8$ and adds *every other* slope of the 16-head sequence
# until there are $H$ — the in-between values, which interleave with the first eight. So 12 heads do not get
# a geometric sequence: the first 8 are $2^{-1}, \dots, 2^{-8}$, the last 4 are $2^{-0.5}, 2^{-1.5},
# 2^{-2.5}, 2^{-3.5}$, and sorted they form a sequence that is geometric in two pieces.

# %%
twelve = alibi_slopes(12).tolist()
print("ALiBi slopes for 12 heads:", [round(s, 4) for s in twelve])
assert twelve[:8] == [2.0 ** -e for e in range(1, 9)]                 # the 8-head sequence
assert all(math.isclose(a, 2.0 ** -(e + 0.5), rel_tol=1e-6) for e, a in enumerate(twelve[8:]))  # every other of 16's
ratios = [b / a for a, b in zip(sorted(twelve)[:-1], sorted(twelve)[1:])]
assert max(ratios) > 1.9 > 1.5 > min(ratios), "sorted, the ratios are not constant: not one geometric sequence"

# %% [markdown]
# ## Exercises
#
# 1. Write `sinusoidal_positions(n_positions, d_model)` (sin on even columns, cos on odd). Checked by the
#    **sinusoidal_positions** adapter.
# 2. Write `rope(x, positions, theta=10000.0)` with the rotate-half pairing used here, and check the
#    relative-offset property on it as this lesson does. Checked by the **rope** adapter.
# 3. Predict the ALiBi slopes for 6 heads from the rule above, then check with `alibi_slopes(6)`.
#
# Solutions: `lessons/solutions/03_positional_encodings.py`.

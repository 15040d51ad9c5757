# %% [markdown]
# # Lesson 02: multi-head attention
#
# One attention head computes, for every query, a weighted average of the values, with weights from how well
# the query matches each key (docs/math/multi_head_attention.md, (mha.2)):
#
# $$O = \operatorname{softmax}\!\Big(\frac{QK^\top}{\sqrt{D}} + A\Big)V.$$
#
# One head gives each token *one* distribution over the others. Multi-head attention runs $H$ heads side by
# side, each in its own $D = C/H$ dimensional slice of the projections, then **concatenates** the heads and
# mixes them with an output projection (mha.3):
#
# $$\operatorname{MHA}(X) = [O_1\ \cdots\ O_H]\,W_O + b_O.$$
#
# In this lesson we build it by hand from the projections of `minitx.MultiHeadAttention`, check that the
# module agrees, and then check both against PyTorch's `torch.nn.MultiheadAttention` — code nobody here wrote.

# %%
import os

import torch
from einops import rearrange

from minitx import functional as F
from minitx.attention.multi_head import MultiHeadAttention
from minitx.plots import attention_map, output_dir

FAST = os.environ.get("MINITX_FAST") == "1"
torch.manual_seed(0)

words = "the cat sat on the mat because it was warm".split()
N, C, H = len(words), 16, 4
D = C // H
x = torch.randn(1, N, C)  # stand-in embeddings for the sentence, (B, N, C)
mha = MultiHeadAttention(C, H).eval()
print(mha)

# %% [markdown]
# ## Splitting into heads is a reshape
#
# The query projection is one $C \times C$ matrix. Head $h$ owns columns $hD \ldots (h+1)D-1$ of its output
# (mha.1). `einops.rearrange` names the axes, so the split reads like the maths.

# %%
q = rearrange(mha.q_proj(x), "b n (h d) -> b h n d", h=H)  # (1, N, C) -> (1, H, N, D)
k = rearrange(mha.k_proj(x), "b n (h d) -> b h n d", h=H)
v = rearrange(mha.v_proj(x), "b n (h d) -> b h n d", h=H)
print("q per head:", tuple(q.shape))

# head 2 by slicing columns of the projection: the same numbers
torch.testing.assert_close(q[0, 2], mha.q_proj(x)[0, :, 2 * D:3 * D])

# %% [markdown]
# ## Each head attends on its own
#
# Scores are scaled by $1/\sqrt{D}$ — the head width, not the model width — so they have unit variance per
# head. We use `minitx.functional.softmax` for the weights.

# %%
scores = q @ k.transpose(-2, -1) / D ** 0.5  # (1, H, N, D) @ (1, H, D, N) -> (1, H, N, N)
weights = F.softmax(scores, dim=-1)
heads = weights @ v  # (1, H, N, N) @ (1, H, N, D) -> (1, H, N, D)
assert torch.allclose(weights.sum(-1), torch.ones(1, H, N))

# %% [markdown]
# ## Concatenate, then project
#
# `rearrange(..., "b h n d -> b n (h d)")` puts the heads back side by side; `out_proj` mixes them.

# %%
by_hand = mha.out_proj(rearrange(heads, "b h n d -> b n (h d)"))  # (1, H, N, D) -> (1, N, C)
out, module_weights = mha(x, return_weights=True)
torch.testing.assert_close(by_hand, out)
torch.testing.assert_close(weights, module_weights)
print("hand-built multi-head attention == minitx.MultiHeadAttention")

# %% [markdown]
# It is not an average of heads. Splitting $W_O$ into row blocks $W_O^{(h)}$ gives
# $\sum_h O_h W_O^{(h)}$ (mha.4): every head writes into the full width through its *own* map.
# Averaging the heads would instead squeeze them all into one $D$-dimensional space.

# %%
blocks = mha.out_proj.weight.T.reshape(H, D, C)  # W_O^T (C_in, C_out) -> (H, D, C_out) row blocks
as_sum = sum(heads[0, h] @ blocks[h] for h in range(H)) + mha.out_proj.bias
torch.testing.assert_close(as_sum, out[0])
average = heads.mean(dim=1)  # (1, N, D): not even the right width
assert average.shape[-1] == D != C

# %% [markdown]
# ## What the heads look at
#
# With random weights the patterns mean nothing linguistically, but each head already has its own.

# %%
fig = attention_map(module_weights[0], queries=words, keys=words, title="random MHA",
                    path=output_dir() / "02_attention_heads.png")
differences = [(module_weights[0, a] - module_weights[0, b]).abs().max().item()
               for a in range(H) for b in range(a + 1, H)]
assert min(differences) > 1e-3, "every pair of heads attends differently"

# %% [markdown]
# ## Check against PyTorch
#
# `torch.nn.MultiheadAttention` packs $W_Q, W_K, W_V$ into one `in_proj_weight` of shape $(3C, C)$. Copy our
# weights in, and the outputs must agree. Padding: PyTorch's `key_padding_mask` is True for *padding*; minitx's
# `key_padding_mask` (the name every layer and backend uses, down from the model's Hugging Face-style
# `attention_mask`) is True for *real* tokens.

# %%
ref = torch.nn.MultiheadAttention(C, H, batch_first=True).eval()
with torch.no_grad():
    ref.in_proj_weight.copy_(torch.cat([mha.q_proj.weight, mha.k_proj.weight, mha.v_proj.weight]))
    ref.in_proj_bias.copy_(torch.cat([mha.q_proj.bias, mha.k_proj.bias, mha.v_proj.bias]))
    ref.out_proj.weight.copy_(mha.out_proj.weight)
    ref.out_proj.bias.copy_(mha.out_proj.bias)

batch = torch.randn(2 if FAST else 8, N, C)
real = torch.ones(batch.shape[0], N, dtype=torch.long)
real[0, 7:] = 0  # the first sentence is 7 tokens long, then padding
expected, expected_w = ref(batch, batch, batch, key_padding_mask=real == 0, average_attn_weights=False)
ours, ours_w = mha(batch, key_padding_mask=real.bool(), return_weights=True)
torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
torch.testing.assert_close(ours_w, expected_w, rtol=1e-5, atol=1e-5)
assert ours_w[0, :, :, 7:].abs().max() == 0, "no weight on padding"
print("minitx.MultiHeadAttention == torch.nn.MultiheadAttention (with padding)")

# %% [markdown]
# The same module runs on PyTorch's fused kernel by switching the backend; the answer does not change.

# %%
mha.backend = "sdpa"
torch.testing.assert_close(mha(batch, key_padding_mask=real.bool()), ours, rtol=1e-5, atol=1e-5)
print("backend 'sdpa' agrees with 'math'")

# %% [markdown]
# ## Exercises
#
# 1. Write `multi_head_attention(x, q_weight, k_weight, v_weight, o_weight, n_heads, attention_mask=None,
#    is_causal=False)` (no biases; `attention_mask` (B, N), 1 = real token). Checked by the
#    **multi_head_attention** adapter.
# 2. Count the parameters of one attention layer with $C = 64$ and $H = 1, 2, 4, 8$ heads. Why does the count
#    not depend on $H$, and what *does* change with $H$?
#
# Solutions: `lessons/solutions/02_multi_head_attention.py`.

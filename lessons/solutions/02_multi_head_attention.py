# %% [markdown]
# # Solutions to lesson 02's exercises

# %%
import math

import torch
from einops import rearrange

from minitx.attention.multi_head import MultiHeadAttention


# %% [markdown]
# **1. Multi-head attention** (adapter **multi_head_attention**), weights in `nn.Linear`'s (out, in) layout.

# %%
def multi_head_attention(x, q_weight, k_weight, v_weight, o_weight, n_heads, attention_mask=None,
                         is_causal=False):
    B, N, C = x.shape
    q, k, v = (rearrange(x @ w.T, "b n (h d) -> b h n d", h=n_heads) for w in (q_weight, k_weight, v_weight))
    scores = q @ k.transpose(-2, -1) / math.sqrt(C // n_heads)  # (B, H, N, N)
    allowed = torch.ones(N, N, dtype=torch.bool)
    if is_causal:
        allowed = allowed.tril()
    allowed = allowed.expand(B, 1, N, N)
    if attention_mask is not None:
        allowed = allowed & attention_mask.bool()[:, None, None, :]  # (B, N) -> (B, 1, 1, N): keys
    weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1).nan_to_num(0.0)  # empty row: 0
    return rearrange(weights @ v, "b h n d -> b n (h d)") @ o_weight.T


torch.manual_seed(0)
mha = MultiHeadAttention(16, 4, bias=False).eval()
x = torch.randn(2, 5, 16)
mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
ours = multi_head_attention(x, mha.q_proj.weight, mha.k_proj.weight, mha.v_proj.weight, mha.out_proj.weight, 4,
                            attention_mask=mask, is_causal=True)
torch.testing.assert_close(ours, mha(x, key_padding_mask=mask.bool(), is_causal=True))
print("multi-head attention by hand == minitx.MultiHeadAttention")

# %% [markdown]
# **2. Parameters do not depend on H.** The four projections are $C \times C$ whatever the split: heads cut the
# same $C$ output features into $H$ groups of $D = C/H$. What changes is the number of attention patterns
# ($H$ softmaxes) and the size of each dot product ($D$).

# %%
counts = {h: sum(p.numel() for p in MultiHeadAttention(64, h).parameters()) for h in (1, 2, 4, 8)}
print(counts)
assert len(set(counts.values())) == 1 and counts[1] == 4 * (64 * 64 + 64)

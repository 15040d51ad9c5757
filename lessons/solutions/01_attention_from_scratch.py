# %% [markdown]
# # Solutions to lesson 01's exercises
#
# The implementations are plain PyTorch, written as `minitx check` adapters expect them (module-level
# functions with the adapters' names); this file also checks them against minitx and PyTorch.

# %%
import math

import torch
import torch.nn.functional as F

from minitx import functional as mf


# %% [markdown]
# **1. A stable softmax** (adapter **softmax**): subtract the max (softmax.1); a row of all $-\infty$ has max
# $-\infty$, so replace that max by 0 and return exp(-inf) = 0 everywhere instead of 0/0 (softmax.4).

# %%
def softmax(x, dim=-1):
    c = x.amax(dim=dim, keepdim=True)
    c = torch.where(torch.isfinite(c), c, torch.zeros_like(c))
    e = torch.exp(x - c)
    s = e.sum(dim=dim, keepdim=True)
    return e / torch.where(s > 0, s, torch.ones_like(s))


x = torch.randn(4, 7) * 50  # large logits: a naive exp overflows in float32 only above ~88, but 1e3 would
x[1] = float("-inf")
torch.testing.assert_close(softmax(x)[[0, 2, 3]], torch.softmax(x, -1)[[0, 2, 3]])
assert torch.equal(softmax(x)[1], torch.zeros(7)) and torch.isfinite(softmax(x * 100)).all()


# %% [markdown]
# **2. SDPA** (adapter **scaled_dot_product_attention**).

# %%
def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False, scale=None):
    n, m = q.shape[-2], k.shape[-2]
    scores = q @ k.transpose(-2, -1) * (scale if scale is not None else 1 / math.sqrt(q.shape[-1]))
    allowed = torch.ones(n, m, dtype=torch.bool, device=q.device)
    if is_causal:
        allowed = allowed.tril()
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            allowed = allowed & attn_mask
        else:
            scores = scores + attn_mask  # an additive float mask, as SDPA
    return softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ v


q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 6, 8), torch.randn(2, 3, 6, 8)
mask = torch.rand(5, 6) > 0.3
mask[0] = False  # a fully masked row: zeros
ours = scaled_dot_product_attention(q, k, v, attn_mask=mask)
torch.testing.assert_close(ours, mf.scaled_dot_product_attention(q, k, v, attn_mask=mask))
torch.testing.assert_close(ours[..., 1:, :], F.scaled_dot_product_attention(q, k, v, attn_mask=mask)[..., 1:, :])
assert torch.equal(ours[..., 0, :], torch.zeros(2, 3, 8))
print("softmax and SDPA by hand agree with minitx and PyTorch")

# %% [markdown]
# **3. Zeroing after the softmax.** The masked keys still took their share of the denominator, so the remaining
# weights sum to less than 1 and the output shrinks towards zero by that share. Only rows where some masked key
# had weight differ (here: every row, since `[PAD]` keys get weight in the unmasked softmax).

# %%
torch.manual_seed(0)
N, D = 8, 8
is_real = torch.tensor([True] * 6 + [False] * 2)
q, k = torch.randn(N, D), torch.randn(N, D)
scores = q @ k.T / math.sqrt(D)
right = torch.softmax(scores.masked_fill(~is_real, float("-inf")), -1)
after = torch.softmax(scores, -1) * is_real
print("row sums when zeroing after the softmax:", after.sum(-1))
assert torch.allclose(right.sum(-1), torch.ones(N)) and (after.sum(-1) < 1).all()
torch.testing.assert_close(after / after.sum(-1, keepdim=True), right)  # renormalising would repair it

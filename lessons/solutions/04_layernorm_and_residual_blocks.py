# %% [markdown]
# # Solutions to lesson 04's exercises

# %%
import math

import torch

from minitx import functional as F
from minitx.nn.block import standard_block


# %% [markdown]
# **1.** (adapters **layer_norm** and **gelu**)

# %%
def layer_norm(x, weight, bias, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)  # biased: divide by C, not C - 1
    return (x - mu) / torch.sqrt(var + eps) * weight + bias


def gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


x, w, b = torch.randn(3, 32), torch.randn(32), torch.randn(32)
torch.testing.assert_close(layer_norm(x, w, b), F.layer_norm(x, w, b))
torch.testing.assert_close(gelu(x), torch.nn.functional.gelu(x))

# %% [markdown]
# **2.** The unbiased variance is $C/(C-1)$ times larger, so the output shrinks by $\sqrt{(C-1)/C}$: 1.6 % for
# $C = 32$. Small, but far above float32 rounding: the **layer_norm** check catches it.

# %%
unbiased = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True) + 1e-5)
ratio = (unbiased / layer_norm(x, torch.ones(32), torch.zeros(32))).mean().item()
print(f"unbiased / biased = {ratio:.4f}, sqrt(31/32) = {math.sqrt(31 / 32):.4f}")
assert abs(ratio - math.sqrt(31 / 32)) < 1e-3

# %% [markdown]
# **3.** Without the final LayerNorm nothing divides by the growing stream, so the loss's gradient reaches the
# top block at full size whatever the depth: the top gradient no longer shrinks like $1/\sqrt L$. (It is the
# *final norm* of pre-LN that shrinks it.)

# %%
def top_gradient(depth, final_norm):
    torch.manual_seed(0)
    stack = torch.nn.Sequential(*[standard_block(32, 4, 128, dropout=0.0, norm_first=True) for _ in range(depth)])
    for m in stack.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.xavier_normal_(m.weight)
            torch.nn.init.zeros_(m.bias)
    g = torch.Generator().manual_seed(1)
    h = stack(torch.randn(4, 8, 32, generator=g))
    out = F.layer_norm(h, None, None) if final_norm else h
    ((out - torch.randn(out.shape, generator=g)) ** 2).mean().backward()
    return torch.cat([p.grad.flatten() for p in stack[-1].parameters()]).norm().item()


with_norm = top_gradient(12, True) / top_gradient(2, True)
without = top_gradient(12, False) / top_gradient(2, False)
print(f"top gradient, depth 12 vs 2: with the final norm x{with_norm:.2f}, without x{without:.2f}")
assert with_norm < 0.7 < without

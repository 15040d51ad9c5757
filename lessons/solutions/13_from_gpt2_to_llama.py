# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Solutions to lesson 13's exercises

# %%
import torch

from minitx.attention.multi_head import MultiHeadAttention
from minitx.nn.feed_forward import FeedForward, SwiGLU
from minitx.nn.norms import LayerNorm, RMSNorm

torch.manual_seed(0)

# %% [markdown]
# **1.** LayerNorm divides $x - \mu$ by $\sqrt{\operatorname{Var}(x) + \epsilon}$ with
# $\operatorname{Var}(x) = \operatorname{mean}(x^2) - \mu^2$; when $\mu = 0$ that is exactly RMSNorm's
# $x / \sqrt{\operatorname{mean}(x^2) + \epsilon}$. With a mean, LayerNorm removes it and RMSNorm keeps it.

# %%
C = 16
rms, ln = RMSNorm(C, eps=1e-6), LayerNorm(C, eps=1e-6, bias=False)
with torch.no_grad():
    rms.weight.copy_(torch.randn(C))
    ln.weight.copy_(rms.weight)
x = torch.randn(4, C)
centred = x - x.mean(-1, keepdim=True)
print("zero-mean rows: max difference", float((rms(centred) - ln(centred)).abs().max().detach()))
assert torch.allclose(rms(centred), ln(centred), atol=1e-5)
assert not torch.allclose(rms(x + 3.0), ln(x + 3.0), atol=1e-2)

# %% [markdown]
# **2.** SwiGLU has three $C \times d_\text{ff}$ matrices (gate, up, down): $3 C d_\text{ff}$. GPT-2's MLP has
# two $C \times 4C$ ones: $8C^2$. They are equal at $d_\text{ff} = 8C/3$, so a Llama block costs what a GPT-2
# block costs.

# %%
C = 96
d_ff = 8 * C // 3  # 256
swiglu = sum(p.numel() for p in SwiGLU(C, d_ff).parameters())
mlp = sum(p.numel() for p in FeedForward(C, 4 * C, bias=False).parameters())
print(f"SwiGLU (d_ff = {d_ff}): {swiglu:,} parameters; GELU MLP (d_ff = {4 * C}): {mlp:,}")
assert swiglu == 3 * C * d_ff == mlp == 8 * C * C

# %% [markdown]
# **3.** The cache keeps keys and values per key/value head: $2 H_{kv} D$ numbers per token and layer instead
# of $2 H D$, so $H / H_{kv} = 4$ times smaller. The key projection maps $C = H D = 512$ to
# $H_{kv} D = 128$: its weight is (128, 512).

# %%
mha = MultiHeadAttention(512, 8, n_kv_heads=2, bias=False)
print("k_proj weight:", tuple(mha.k_proj.weight.shape), " q_proj weight:", tuple(mha.q_proj.weight.shape))
assert tuple(mha.k_proj.weight.shape) == (128, 512) and tuple(mha.q_proj.weight.shape) == (512, 512)
assert (2 * 8 * 64) // (2 * 2 * 64) == 4

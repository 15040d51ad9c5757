# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Solutions to lesson 17's exercises

# %%
import types
import warnings

import torch

from minitx.conformance import check

torch.manual_seed(0)

# %% [markdown]
# **1.** The unbiased variance divides by $C-1$ instead of $C$: the output is off by a factor
# $\sqrt{(C-1)/C}$ before the affine, so the value check fails and names the LayerNorm forward's label.
# Hypothesis shrinks the failure to the smallest input, a single feature ($C = 1$), where $C - 1 = 0$ makes the
# variance NaN. Dividing by $C$ (`unbiased=False`) fixes it.

# %%
def layer_norm_unbiased(x, weight, bias, eps=1e-5):  # unbiased: divides by C - 1
    mean = x.mean(-1, keepdim=True)
    with warnings.catch_warnings():  # torch warns at C = 1 (no degrees of freedom): that is the bug
        warnings.simplefilter("ignore")
        var = x.var(-1, unbiased=True, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def layer_norm_fixed(x, weight, bias, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


bad = check(types.SimpleNamespace(layer_norm=layer_norm_unbiased), only=["layer_norm"], examples=5)
good = check(types.SimpleNamespace(layer_norm=layer_norm_fixed), only=["layer_norm"], examples=5)
print(bad.summary(), "|", good.summary())
assert not bad.ok and bad.failed == ["layer_norm"]
print(bad)
assert "(ln." in str(bad) or "(layernorm." in str(bad), "the failure names a LayerNorm equation"
assert good.ok

# %% [markdown]
# **2.** The kit probes a failing `rope` and says it seems to use the interleaved pairing. Both pairings
# rotate 2-D planes by the same angles, so both keep the relative-offset property; but they pair different
# coordinates, so q and k weights trained with one pairing give different scores under the other: a Llama
# checkpoint (rotate-half, as Hugging Face stores it) needs rotate-half, or its q/k rows permuted.

# %%
def rope_interleaved(x, positions, theta=10000.0):
    d = x.shape[-1]
    inv_freq = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]  # (N, D/2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]  # (..., N, D/2) each: the interleaved pairs
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # (..., N, D/2, 2)
    return out.flatten(-2)  # (..., N, D)


report = check(types.SimpleNamespace(rope=rope_interleaved), only=["rope"], examples=5)
print(report)
assert not report.ok and "interleav" in str(report).lower()

# %% [markdown]
# **3.** LoRA's B starts at zero, so at initialisation the update $x A^\top B^\top$ is zero whatever it is
# scaled by: any scaling passes. Only with B perturbed does the factor show; with $\alpha$ instead of
# $\alpha/r$ the update is $r$ times too large, and the kit's hint says so.

# %%
def lora_alpha_only(x, weight, bias, lora_A, lora_B, alpha):
    out = x @ weight.T + alpha * (x @ lora_A.T) @ lora_B.T
    return out if bias is None else out + bias


report = check(types.SimpleNamespace(lora_linear=lora_alpha_only), only=["lora_linear"], examples=5)
print(report)
assert not report.ok and "alpha" in str(report)

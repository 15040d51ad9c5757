# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Lesson 17 — check your implementation
#
# You have written your own attention. It runs, the shapes are right, the loss goes down. Is it *right*?
# `minitx check` answers that: you write the functions you want checked in a file (the *adapters*), and the
# kit compares each one with minitx's reference math on inputs Hypothesis draws — odd sizes, N != M, masks
# with a fully masked row, large logits, half precision — values *and* gradients. A failure is one line: what
# differs and where, the smallest input that shows it, the docs/math label of the equation it breaks and a hint.
#
# In this lesson we write an attention with two classic bugs, run the kit, read each failure, and fix it.
# The guide is `docs/checking.md`; the equations are in `docs/math/attention.md`.

# %%
import math
import os
import types

import matplotlib.pyplot as plt
import torch

from minitx.conformance import check
from minitx.conformance import references
from minitx.plots import output_dir

FAST = os.environ.get("MINITX_FAST") == "1"
EXAMPLES = 5 if FAST else 25
torch.manual_seed(0)
torch.set_num_threads(1)

# %% [markdown]
# ## A first attempt
#
# The contract is PyTorch's: `scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False,
# scale=None)` with q (..., N, D), k and v (..., M, D), a boolean mask where True means *may attend*, and
# `is_causal` aligned top-left (query i sees keys j <= i). One more promise, minitx's: a query with no
# allowed key gives zeros, not NaN. Here is a first attempt, as many of us write it:

# %%
def attention_v1(q, k, v, attn_mask=None, is_causal=False, scale=None):
    scores = q @ k.transpose(-2, -1)  # (..., N, D) @ (..., D, M) -> (..., N, M)
    n, m = scores.shape[-2:]
    allowed = torch.ones(n, m, dtype=torch.bool).tril() if is_causal else torch.ones(n, m, dtype=torch.bool)
    if attn_mask is not None:
        allowed = allowed & attn_mask
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


report = check(types.SimpleNamespace(scaled_dot_product_attention=attention_v1),
               only=["scaled_dot_product_attention"], examples=EXAMPLES)
print(report)

# %% [markdown]
# ## Reading the failure
#
# The line says the values differ, by how much and where, on which input (`batch=(2,), N=3, M=5, D=4`: no
# mask at all), and that the broken equation is (attn.1), the scores $s\,QK^\top$ with $s = 1/\sqrt D$.
# The hint goes further: the output *matches* attention without the scale. We forgot $1/\sqrt D$ (and
# ignored the `scale` argument). Without it the scores grow like $\sqrt D$, the softmax saturates, and the
# gradients vanish — a bug that trains, only worse.

# %%
failure = report.result("scaled_dot_product_attention")
assert failure.status == "FAIL" and failure.mismatch.label == "attn.1"
assert "not scaled by 1/sqrt(D)" in failure.detail


def attention_v2(q, k, v, attn_mask=None, is_causal=False, scale=None):
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (attn.1)
    n, m = scores.shape[-2:]
    allowed = torch.ones(n, m, dtype=torch.bool).tril() if is_causal else torch.ones(n, m, dtype=torch.bool)
    if attn_mask is not None:
        allowed = allowed & attn_mask
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


report = check(types.SimpleNamespace(scaled_dot_product_attention=attention_v2),
               only=["scaled_dot_product_attention"], examples=EXAMPLES)
print(report)

# %% [markdown]
# ## The second failure: a row with nothing to attend to
#
# Now the kit finds NaN in the last query row of a case whose mask lets that query see no key at all
# (`mask='bool_masked_row'`), and cites (softmax.4): a row of all $-\infty$ scores has max $-\infty$, so
# softmax computes $e^{-\infty - (-\infty)} = e^{\text{NaN}}$. In a padded batch (a sequence that is all
# padding, a causal mask with a left-padded prompt) that NaN spreads through the whole model at the next
# layer. The fix: give such rows finite scores, and zero their weights afterwards — without letting a NaN
# reach the backward pass either.

# %%
failure = report.result("scaled_dot_product_attention")
assert failure.status == "FAIL" and failure.mismatch.label == "softmax.4", failure.detail
assert "nan" in failure.detail


def attention_v3(q, k, v, attn_mask=None, is_causal=False, scale=None):
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q.float() @ k.float().transpose(-2, -1)) * scale  # (attn.1), in float32 for half inputs
    n, m = scores.shape[-2:]
    allowed = torch.ones(n, m, dtype=torch.bool).tril() if is_causal else torch.ones(n, m, dtype=torch.bool)
    if attn_mask is not None:
        allowed = allowed & attn_mask
    any_key = allowed.any(dim=-1, keepdim=True)                 # (..., N, 1): does the row see anything?
    scores = scores.masked_fill(~allowed, float("-inf")).masked_fill(~any_key, 0.0)
    weights = torch.softmax(scores, dim=-1) * any_key           # (softmax.4): such rows are exactly 0
    return (weights @ v.float()).to(q.dtype)


report = check(types.SimpleNamespace(scaled_dot_product_attention=attention_v3),
               only=["scaled_dot_product_attention"], examples=EXAMPLES)
print(report)
assert report.ok and report.passed == ["scaled_dot_product_attention"]

# %% [markdown]
# ## What the two bugs look like
#
# The weights of one head, on a 6 x 6 causal pattern where the last query is also masked out entirely:
# the first version's rows are too flat or too peaked (no scale: here, too peaked) and its last row is NaN
# (drawn white); the fixed version's last row is zeros.

# %%
q, k = torch.randn(6, 16) * 2, torch.randn(6, 16) * 2
mask = torch.ones(6, 6, dtype=torch.bool).tril()
mask[-1] = False
eye = torch.eye(6)  # v = identity: the output *is* the weight matrix
fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
for ax, fn, title in ((axes[0], attention_v1, "first attempt: no 1/sqrt(D), NaN row"),
                      (axes[1], attention_v3, "fixed: passes minitx check")):
    weights = fn(q, k, eye, attn_mask=mask)
    ax.imshow(weights.numpy(), vmin=0, vmax=1, cmap="viridis")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("key j")
    ax.set_ylabel("query i")
fig.tight_layout()
fig.savefig(output_dir() / "17_attention_bugs.png", dpi=110)
assert torch.isnan(attention_v1(q, k, eye, attn_mask=mask)[-1]).all()
assert torch.equal(attention_v3(q, k, eye, attn_mask=mask)[-1], torch.zeros(6))

# %% [markdown]
# ## Your turn
#
# Put your own functions in a file — any subset of the 17 adapters in `docs/checking.md`, from `softmax` to
# `causal_lm_loss`, `get_adamw_cls` and `mask_tokens`, or your whole GPT with `build_gpt` — and run
#
# ```bash
# minitx check my_adapters.py              # all you provide; --only rope, --seed 3, --examples 100
# ```
#
# Exit status 0 means every function you provided passes. minitx's own references pass, of course:

# %%
report = check(references, examples=2 if FAST else 10)
print(report.summary())
assert report.ok and len(report.passed) == 18

# %% [markdown]
# ## Exercises
#
# 1. Write `layer_norm(x, weight, bias, eps=1e-5)` with the *unbiased* variance (`x.var(-1, unbiased=True)`),
#    run `minitx check` on it with `--only layer_norm`, and read which equation the failure names. Then fix it.
# 2. Write `rope(x, positions, theta=10000.0)` with the *interleaved* pairing (dimensions 2i and 2i+1 rotate
#    together, as in the RoFormer paper) instead of rotate-half. What does the failure line say about the
#    pairing? Why are both pairings "correct" and still not interchangeable with a checkpoint?
# 3. A learner's LoRA layer scales the update by `alpha` instead of `alpha / r`. Why does the check perturb
#    `lora_B` away from zero before comparing, and what would a comparison at initialisation have shown?
#
# Solutions: `lessons/solutions/17_check_your_implementation.py`.

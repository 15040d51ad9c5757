# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Lesson 01 — attention from scratch
#
# Attention lets every token build its new representation as a weighted average of the other tokens'
# representations, with weights it computes itself. We build it by hand, one step at a time, on a
# six-word sentence, then check that `minitx.functional.scaled_dot_product_attention` and PyTorch's own
# `F.scaled_dot_product_attention` give the same numbers. The equations are in `docs/math/attention.md`;
# labels such as (attn.1) point there.
#
# $$ \operatorname{Attention}(Q, K, V) = \operatorname{softmax}\!\Big(\frac{QK^\top}{\sqrt D} + B\Big)\,V $$

# %%
import math
import os

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from minitx import functional as mf, plots

FAST = os.environ.get("MINITX_FAST") == "1"
torch.manual_seed(0)
torch.set_printoptions(precision=3, sci_mode=False)

# %% [markdown]
# ## A toy sentence
#
# Six words plus two `[PAD]` tokens (a batch of sentences of different lengths is padded to one length).
# Each token gets a random embedding of width $C = 16$; a real model learns these. Queries, keys and values
# are three learned linear maps of the embeddings — here random matrices $W_Q, W_K, W_V$ with head size
# $D = 8$.

# %%
tokens = ["the", "cat", "sat", "on", "the", "mat", "[PAD]", "[PAD]"]
is_real = torch.tensor([t != "[PAD]" for t in tokens])        # (N,) True = real token, as an HF attention_mask
N, C, D = len(tokens), 16, 8

vocab = sorted(set(tokens))
embedding = torch.randn(len(vocab), C)
x = embedding[torch.tensor([vocab.index(t) for t in tokens])]  # (N, C); both "the" share one embedding
W_q, W_k, W_v = (torch.randn(C, D) / math.sqrt(C) for _ in range(3))
q, k, v = x @ W_q, x @ W_k, x @ W_v                              # (N, C) @ (C, D) -> (N, D)

# %% [markdown]
# ## Step 1 — scores, and step 2 — scale (attn.1)
#
# Query $i$ scores key $j$ by the dot product $q_i \cdot k_j$. All pairs at once: $QK^\top$, an $N\times M$
# matrix (here $M = N$, self-attention). Then multiply by $1/\sqrt D$; why is the subject of the last section.

# %%
scores = q @ k.T                   # (N, D) @ (D, N) -> (N, N)
scores = scores / math.sqrt(D)     # (attn.1)
assert torch.allclose(scores[1, 4], (q[1] * k[4]).sum() / math.sqrt(D))  # one entry, by the definition

# %% [markdown]
# ## Step 3 — masks (attn.2), (attn.3)
#
# Two masks, both boolean with **True = may attend**:
#
# * **causal**: token $i$ may only look at tokens $j \le i$ (a language model must not see the future);
# * **padding**: nobody may look at `[PAD]` keys — they carry no meaning.
#
# A forbidden score is set to $-\infty$, so that $e^{-\infty} = 0$: the key gets weight exactly 0.

# %%
causal = torch.ones(N, N, dtype=torch.bool).tril()            # j <= i
allowed = causal & is_real[None, :]                           # (N, N) & (1, N): keys must be real
assert torch.equal(causal, mf.causal_mask(N, N))
masked = scores.masked_fill(~allowed, float("-inf"))

# %% [markdown]
# ## Step 4 — softmax, row by row (softmax.1)
#
# Each row becomes a probability distribution over the keys. Subtracting the row maximum first changes nothing
# mathematically (it cancels) but keeps $e^{x}$ from overflowing.

# %%
row_max = masked.max(dim=-1, keepdim=True).values
e = torch.exp(masked - row_max)
weights = e / e.sum(dim=-1, keepdim=True)                      # (N, N), rows sum to 1
assert torch.allclose(weights.sum(-1), torch.ones(N))
assert torch.all(weights[~allowed] == 0)
# "sat" (query 2) can only see "the cat sat": three non-zero weights.
assert (weights[2] > 0).sum() == 3

# %% [markdown]
# ## Step 5 — weighted sum of the values (attn.6)

# %%
out = weights @ v                                              # (N, N) @ (N, D) -> (N, D)
print("attention weights (rows: queries, columns: keys)")
print(weights)

# %% [markdown]
# ## Does the library agree? And PyTorch?
#
# `minitx.functional` computes the same thing with its own hand-written backward; PyTorch's fused op is an
# independent check. The boolean mask has the same meaning in all three.

# %%
ours, ours_weights = mf.scaled_dot_product_attention(q, k, v, attn_mask=is_real[None, :], is_causal=True,
                                                     return_weights=True)
theirs = F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=allowed[None])[0]
assert torch.allclose(ours, out, atol=1e-6) and torch.allclose(ours_weights, weights, atol=1e-6)
assert torch.allclose(theirs, out, atol=1e-6)
print("max |minitx - by hand| =", (ours - out).abs().max().item(), " max |torch - by hand| =",
      (theirs - out).abs().max().item())

# %% [markdown]
# The figure shows the weights for the causal mask alone and for causal + padding: the upper triangle is
# empty (the future), and with padding the `[PAD]` columns are empty too.

# %%
_, causal_only = mf.scaled_dot_product_attention(q, k, v, is_causal=True, return_weights=True)
for name, w in (("causal", causal_only), ("causal_padding", ours_weights)):
    fig = plots.attention_map(w, queries=tokens, keys=tokens, title=name.replace("_", " + ") + " mask",
                              path=plots.output_dir() / f"01_attention_{name}.png")

# %% [markdown]
# ## A query that may look at nothing
#
# With *left* padding (`[PAD]` first) and a causal mask, the first query may attend to no key at all: its row
# is all $-\infty$ and the textbook softmax is $0/0$. minitx defines that row's output (and gradient) as zero
# (softmax.4); a NaN here would spread through the whole batch in the backward pass.

# %%
left_real = torch.tensor([False, True, True, True])
s = torch.randn(4, 4).masked_fill(~(torch.ones(4, 4, dtype=torch.bool).tril() & left_real), float("-inf"))
assert torch.isnan(torch.exp(s[0]) / torch.exp(s[0]).sum()).all()   # the textbook formula: 0 / 0
q4 = torch.randn(4, D, requires_grad=True)
o4 = mf.scaled_dot_product_attention(q4, k[:4], v[:4], attn_mask=left_real, is_causal=True)
o4.sum().backward()
assert torch.equal(o4[0], torch.zeros(D)) and torch.equal(q4.grad[0], torch.zeros(D))
assert torch.isfinite(q4.grad).all()

# %% [markdown]
# ## Why divide by $\sqrt D$?
#
# If the entries of $q$ and $k$ have mean 0 and variance 1, then $q\cdot k = \sum_{d=1}^{D} q_d k_d$ has
# variance $D$. Unscaled scores therefore spread like $\sqrt D$, and the softmax of widely spread scores is
# nearly one-hot ("saturated"): the largest weight approaches 1, and the softmax Jacobian
# $\operatorname{diag}(y) - yy^\top$ (softmax.2) approaches 0, so almost no gradient reaches $Q$ and $K$.
# Measure it for growing head sizes, with 16 keys per query.

# %%
head_dims = [4, 16, 64, 256] if FAST else [4, 16, 64, 256, 1024]
trials = 200 if FAST else 2000
rows = []
for d in head_dims:
    qd, kd = torch.randn(trials, 1, d), torch.randn(trials, 16, d)
    raw = (qd @ kd.transpose(-2, -1)).squeeze(1)                  # (T, 1, d) @ (T, d, 16) -> (T, 16)
    stats = {}
    for name, s in (("unscaled", raw), ("scaled", raw / math.sqrt(d))):
        y = mf.softmax(s)
        jac_norm = (torch.diag_embed(y) - y[:, :, None] * y[:, None, :]).norm(dim=(-2, -1)).mean()
        stats[name] = (s.std().item(), y.max(-1).values.mean().item(), jac_norm.item())
    rows.append((d, stats))
    print(f"D={d:5d}  std(scores) unscaled {stats['unscaled'][0]:6.2f} scaled {stats['scaled'][0]:5.2f} | "
          f"max weight unscaled {stats['unscaled'][1]:.3f} scaled {stats['scaled'][1]:.3f} | "
          f"|Jacobian| unscaled {stats['unscaled'][2]:.3f} scaled {stats['scaled'][2]:.3f}")

# %% [markdown]
# The claims, asserted: unscaled score spread grows like $\sqrt D$ (within 15%), scaled spread stays near 1;
# unscaled softmax saturates (max weight near 1, Jacobian near 0) as $D$ grows, while scaled attention keeps
# the same, soft, trainable distribution at every head size.

# %%
for d, st in rows:
    assert abs(st["unscaled"][0] / math.sqrt(d) - 1) < 0.15 and abs(st["scaled"][0] - 1) < 0.15
max_w_unscaled = [st["unscaled"][1] for _, st in rows]
max_w_scaled = [st["scaled"][1] for _, st in rows]
assert all(a < b for a, b in zip(max_w_unscaled, max_w_unscaled[1:]))        # saturates more with every D
assert max_w_unscaled[-1] > 0.85 and max(max_w_scaled) - min(max_w_scaled) < 0.1
assert rows[-1][1]["unscaled"][2] < 0.5 * rows[-1][1]["scaled"][2]             # gradients shrink unscaled

fig, ax = plt.subplots(figsize=(5, 3.2))
ax.plot(head_dims, max_w_unscaled, marker="o", label=r"$QK^\top$")
ax.plot(head_dims, max_w_scaled, marker="o", label=r"$QK^\top/\sqrt{D}$")
ax.set_xscale("log", base=2)
ax.set_xlabel("head size D")
ax.set_ylabel("mean largest attention weight")
ax.set_title("softmax saturation vs head size (16 keys)")
ax.legend()
fig.tight_layout()
fig.savefig(plots.output_dir() / "01_scale_saturation.png", dpi=110)

# %% [markdown]
# **Takeaways.** Attention is five lines: scores, scale, mask, softmax, weighted sum. Masks are booleans with
# True = may attend, applied as $-\infty$ before the softmax; a row with nothing to attend to gives zeros.
# The $1/\sqrt D$ keeps the scores' spread independent of the head size, so the softmax stays soft and
# gradients keep flowing. Lesson 02 splits attention into heads.

# %% [markdown]
# ## Exercises
#
# 1. Write `softmax(x, dim=-1)` that never overflows (subtract the row's max, (softmax.1)) and returns zeros for a
#    row that is all $-\infty$ (softmax.4). Checked by `minitx check` with the **softmax** adapter.
# 2. Write `scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False, scale=None)` with SDPA's
#    conventions (boolean mask True = may attend; a fully masked row gives zeros). Checked by the
#    **scaled_dot_product_attention** adapter.
# 3. Instead of $-\infty$ before the softmax, multiply the weights of masked keys by 0 *after* it. Compare with
#    the masked softmax on the padded sentence above: which rows differ, and why do they no longer sum to 1?
#
# Solutions: `lessons/solutions/01_attention_from_scratch.py`.

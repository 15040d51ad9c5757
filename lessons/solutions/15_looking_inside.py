# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Solutions to lesson 15's exercises

# %%
import torch

from minitx.interpret.maps import attention_rollout
from minitx.interpret.scores import induction_scores, previous_token_scores

# %% [markdown]
# **1.** Each layer's head-averaged pattern is mixed with the identity, rows renormalised (they already sum to
# 1), and the later layer multiplies from the left: $R = \hat A_2 \hat A_1$. At $\alpha = 1$ every
# $\hat A_l = I$ and the rollout is the identity whatever the model attends to: it measures nothing.

# %%
a1 = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]], dtype=torch.float64)
a2 = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 0.6, 0.4]], dtype=torch.float64)
eye = torch.eye(3, dtype=torch.float64)
mix1, mix2 = 0.5 * a1 + 0.5 * eye, 0.5 * a2 + 0.5 * eye
by_hand = mix2 @ mix1
patterns = torch.stack([a1, a2])[:, None, None]  # (L, B, H, N, N) = (2, 1, 1, 3, 3)
library = attention_rollout(patterns, residual_weight=0.5)[0]
print(by_hand)
assert torch.allclose(library, by_hand, atol=1e-12)
assert torch.allclose(attention_rollout(patterns, residual_weight=1.0)[0], eye)
assert not torch.allclose(mix1 @ mix2, by_hand)  # the order matters

# %% [markdown]
# **2.** A previous-token head puts all of row $i$ on key $i - 1$; an induction head, on the repeat
# ($i \ge T$), puts it on key $i - T + 1$, the token that followed the current one last time.

# %%
T, n = 5, 10
previous = torch.zeros(n, n)
previous[0, 0] = 1.0
for i in range(1, n):
    previous[i, i - 1] = 1.0
induction = torch.zeros(n, n)
for i in range(n):
    induction[i, i - T + 1 if i >= T else 0] = 1.0
patterns = torch.stack([previous, induction])[None, None]  # (L, B, H, N, N) = (1, 1, 2, 10, 10)
prev_scores, ind_scores = previous_token_scores(patterns), induction_scores(patterns, T)
print(prev_scores, ind_scores)
assert prev_scores[0, 0] == 1.0 and ind_scores[0, 1] == 1.0
assert ind_scores[0, 0] == 0.0 and prev_scores[0, 1] < 0.2  # each score singles out its own head

# %% [markdown]
# **3.** A head's output is never 0 on real inputs: it has a typical size and direction, and the layers after it
# (the next LayerNorm's statistics above all) were trained on residual streams that contain it. Removing it
# shifts the whole stream off the distribution the model knows, which can hurt even when the head carries no
# information for the task. Mean-ablation keeps the typical part and removes only what varies with the input —
# the information — so it measures what the head *tells* the model. A check on a random pre-LN stream:

# %%
torch.manual_seed(0)
direction = torch.randn(8)  # not along (1, ..., 1): LayerNorm would remove that part by itself
head_out = 3.0 * direction + 0.1 * torch.randn(256, 8)  # a head whose output is mostly a constant offset
rest = torch.randn(256, 8)
ln = torch.nn.LayerNorm(8, elementwise_affine=False)
clean = ln(rest + head_out)
zero_ablated = ln(rest)
mean_ablated = ln(rest + head_out.mean(0))
zero_shift = (clean - zero_ablated).norm(dim=-1).mean()
mean_shift = (clean - mean_ablated).norm(dim=-1).mean()
print(f"change of the normalised stream: zero-ablation {zero_shift:.3f}, mean-ablation {mean_shift:.3f}")
assert mean_shift < 0.5 * zero_shift

# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Solutions to lesson 14's exercises

# %%
import math

import torch

from minitx.functional import label_smoothed_cross_entropy
from minitx.generation.beam import beam_search

# %% [markdown]
# **1.** The smoothed target is $q_t = 1 - \varepsilon + \varepsilon/V$ and $q_j = \varepsilon/V$ elsewhere;
# cross-entropy against $q$ is smallest when the model's distribution *is* $q$ (Gibbs' inequality), i.e. logits
# $\log q$ up to a constant, and the smallest loss is the entropy $H(q)$ — not 0. A model that drives the loss
# to 0 does not exist; one that is too sure is pulled back.

# %%
V, eps, target = 10, 0.1, 3
q = torch.full((V,), eps / V, dtype=torch.float64)
q[target] += 1 - eps
floor = float(-(q * q.log()).sum())
at_q = float(label_smoothed_cross_entropy(q.log()[None], torch.tensor([target]), smoothing=eps))
too_sure = torch.full((1, V), -20.0, dtype=torch.float64)
too_sure[0, target] = 20.0
print(f"H(q) = {floor:.4f}, loss at log q = {at_q:.4f}, "
      f"loss of a too-sure model = {float(label_smoothed_cross_entropy(too_sure, torch.tensor([target]), eps)):.2f}")
assert abs(at_q - floor) < 1e-12
assert float(label_smoothed_cross_entropy(too_sure, torch.tensor([target]), smoothing=eps)) > floor + 1

# %% [markdown]
# **2.** Greedy takes A (0.6), then A again (0.4) and keeps choosing A, never ending within the limit (its
# best finished alternative, A EOS, has 0.18). The beam keeps B (0.4) beside A, and B EOS has
# $0.4 \cdot 0.9 = 0.36$: the beam returns BOS B EOS.

# %%
BOS, A, B, EOS = range(4)
table = torch.tensor([[0.0, 0.6, 0.4, 0.0],      # after BOS
                      [0.0, 0.4, 0.3, 0.3],      # after A
                      [0.0, 0.05, 0.05, 0.9],    # after B
                      [0.0, 0.0, 0.0, 1.0]]).log()  # after EOS (never used)


def step(sequences, reorder):
    return table[sequences[:, -1]]  # (B K, V): the next token depends on the last one only


prompt = torch.tensor([[BOS]])
greedy = prompt
for _ in range(5):
    greedy = torch.cat([greedy, step(greedy, None).argmax(-1, keepdim=True)], dim=1)
beam = beam_search(step, prompt, num_beams=2, max_length=6, eos_token_id=EOS, pad_token_id=EOS,
                   length_penalty=0.0)
print("greedy:", greedy.tolist(), " beam 2:", beam.tolist())
assert greedy[0].tolist() == [BOS, A, A, A, A, A]
assert beam[0, :3].tolist() == [BOS, B, EOS]

# %% [markdown]
# **3.** Without the cache each of the $G$ steps projects all $S$ source rows to keys and to values in each of
# the $L$ layers: $2GLS$ rows. With it, once: $2LS$ — $G$ times fewer, whatever the source length.

# %%
L_layers, G, S = 6, 30, 40
without, with_cache = 2 * G * L_layers * S, 2 * L_layers * S
print(f"{without} rows without the cache, {with_cache} with it")
assert without // with_cache == G and math.isclose(without / with_cache, G)

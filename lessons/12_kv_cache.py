# %% [markdown]
# # Lesson 12: the KV cache
#
# Generating $T$ tokens with a GPT naively reruns the whole prefix for every new token. But causality
# (dec.2) means a token's keys and values never change once computed: nothing after it can reach it. So
# keep them: the **KV cache** (dec.6). Each step then projects only the new token and attends its one
# query to the cached keys (dec.7). The cost per token drops from quadratic in the context to linear
# (dec.8), and the tokens generated are exactly the same.
#
# The one subtle point is the mask. With $N$ new queries over $M$ keys the causal mask is aligned to the
# **bottom-right** (dec.9); the top-left one (SDPA's `is_causal`) is right only when $N = M$.

# %%
import os
import time

import matplotlib.pyplot as plt
import torch
from einops import rearrange

from minitx.attention.cache import KVCache, bottom_right_causal_mask
from minitx.attention.front_door import attention
from minitx.functional import causal_mask
from minitx.generation.generate import generate
from minitx.models.gpt import GPT, GPTConfig
from minitx.plots import output_dir

FAST = os.environ.get("MINITX_FAST") == "1"
torch.manual_seed(0)
torch.set_num_threads(1)
L = 128 if FAST else 512
model = GPT(GPTConfig(vocab_size=100, max_position=L, d_model=64, n_layers=2, n_heads=4,
                      attention_backend="sdpa")).eval()

# %% [markdown]
# ## A cache by hand, for one block
#
# Feed a sequence one token at a time, keeping each step's $k$ and $v$; the last token's attention output
# must equal the full causal forward's last row.

# %%
block = model.blocks[0]
mha = block.attention
x = torch.randn(1, 10, 64)
h = block.attention_norm(x)
with torch.no_grad():
    full = mha(h, is_causal=True)  # (1, 10, C), every row at once
    keys, values, rows = [], [], []
    for i in range(10):
        hi = h[:, i:i + 1]  # (1, 1, C): only the new token
        q = rearrange(mha.q_proj(hi), "b n (h d) -> b h n d", h=4)
        keys.append(rearrange(mha.k_proj(hi), "b n (h d) -> b h n d", h=4))
        values.append(rearrange(mha.v_proj(hi), "b n (h d) -> b h n d", h=4))
        k, v = torch.cat(keys, 2), torch.cat(values, 2)  # (1, H, i + 1, D): the cache (dec.6)
        o = attention(q, k, v)  # one query, all keys allowed: no mask (dec.7)
        rows.append(mha.out_proj(rearrange(o, "b h n d -> b n (h d)")))
assert torch.allclose(torch.cat(rows, 1), full, atol=1e-5)
print("one-token-at-a-time with a cache == the full causal forward")

# %% [markdown]
# ## Bottom-right, not top-left
#
# Now feed 3 new tokens at once after 5 cached ones: $N = 3$ queries, $M = 8$ keys. Query $i$ is at
# absolute position $i + 5$ and may see keys $0..i+5$: the mask is the lower triangle shifted to the
# bottom-right corner. The top-left triangle would let the first new token see only key 0.

# %%
br, tl = bottom_right_causal_mask(3, 8), causal_mask(3, 8)
print("bottom-right:\n", br.int(), "\ntop-left:\n", tl.int())
ids = torch.randint(0, 100, (1, 8))
with torch.no_grad():
    want = model(ids).logits[:, 5:]
    cache = KVCache(len(model.blocks))  # one LayerKV per block; the model appends to it
    model(ids[:, :5], cache=cache)
    got = model(ids[:, 5:], cache=cache).logits  # each attention uses the bottom-right mask (dec.9)
assert torch.allclose(got, want, atol=1e-5)
q, k, v = torch.randn(1, 4, 3, 16), torch.randn(1, 4, 8, 16), torch.randn(1, 4, 8, 16)
assert not torch.allclose(attention(q, k, v, attn_mask=br), attention(q, k, v, is_causal=True), atol=1e-3)
fig, axes = plt.subplots(1, 2, figsize=(7, 2.4))
for ax, mask, title in zip(axes, (br, tl), ("bottom-right (right for a cache)", "top-left (is_causal)")):
    ax.imshow(mask, cmap="Greens")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("key j (5 cached, 3 new)")
    ax.set_ylabel("new query i")
fig.tight_layout()
fig.savefig(output_dir() / "12_masks.png", dpi=110)

# %% [markdown]
# ## Same tokens, less work
#
# Cached and uncached generation give identical tokens, greedy or sampled with a seed (here with top-k
# sampling, lesson 11: only the 50 most likely tokens may be drawn). The work differs: count the rows each
# step pushes through a projection (dec.8), then time both.

# %%
prompt = torch.randint(0, 100, (1, 8))
new = 40 if FAST else 200
for kwargs in ({"temperature": 0}, {"temperature": 1.0, "top_k": 50, "seed": 3}):
    assert torch.equal(generate(model, prompt, new, **kwargs), generate(model, prompt, new, use_cache=False, **kwargs))
rows = []
hook = model.blocks[0].attention.k_proj.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[1]))
generate(model, prompt, new, temperature=0)
with_cache = sum(rows)
rows.clear()
generate(model, prompt, new, temperature=0, use_cache=False)
without = sum(rows)
hook.remove()
print(f"rows projected for {new} tokens: {with_cache} with a cache, {without} without")
assert with_cache == 8 + new - 1 and without == sum(8 + s for s in range(new))


def per_token_ms(use_cache: bool, n_new: int) -> float:
    start = torch.randint(0, 100, (1, 1))
    began = time.perf_counter()
    generate(model, start, n_new, temperature=0, use_cache=use_cache)
    return 1000 * (time.perf_counter() - began) / n_new


lengths = [32, 64, 128] if FAST else [32, 64, 128, 256, 511]
timings = {c: [per_token_ms(c, n) for n in lengths] for c in (True, False)}
work_ratio = {n: sum(1 + step for step in range(n)) / n for n in lengths}  # rows without / rows with a cache
for n, a, b in zip(lengths, timings[True], timings[False]):
    print(f"{n:4d} tokens: {a:6.2f} ms/token cached, {b:6.2f} uncached: {b / a:5.2f}x faster "
          f"for {work_ratio[n]:5.1f}x fewer rows projected")
# The time saved is far below the rows saved: see below.
assert all(b / a < work_ratio[n] for n, a, b in zip(lengths, timings[True], timings[False]))
if not FAST:  # long contexts: the uncached cost grows with the context, the cached one barely
    assert timings[True][-1] < timings[False][-1]
fig, ax = plt.subplots(figsize=(5, 3.2))
ax.plot(lengths, timings[True], marker="o", label="KV cache")
ax.plot(lengths, timings[False], marker="o", label="no cache")
ax.set_xlabel("tokens generated")
ax.set_ylabel("ms per token (mean)")
ax.legend()
fig.tight_layout()
fig.savefig(output_dir() / "12_kv_cache_time.png", dpi=110)

# %% [markdown]
# Why is the speed-up (about 3x at 511 tokens in a full run) so much smaller than the work saved (256x fewer
# rows), and why can the cache even be *slower* at 32 tokens? Because this model is tiny (width 64, two
# layers): a step's time is mostly fixed overhead that does not depend on how many rows go through — Python,
# a dozen module calls per block, launching each small matrix product, sampling — plus, with the cache,
# appending to it and the bookkeeping of positions and masks. Recomputing 32 rows of width 64 is almost free,
# so at short lengths that bookkeeping can cost more than it saves. The rows ratio is the *upper bound* of the
# speed-up, approached only when the arithmetic dominates: wide models, long contexts, large batches.
# Lesson 10 shows how to time such things honestly.

# %% [markdown]
# ## What it costs in memory
#
# The cache holds $2 \cdot n_\text{layers} \cdot M \cdot C$ numbers per sequence (dec.6): here, at a full
# window, that is small; for GPT-2 large (36 layers, C = 1280, 1024 tokens) it is 94 M floats per sequence,
# which is why long-context serving is limited by cache memory.

# %%
cache = KVCache(len(model.blocks))
with torch.no_grad():
    model(torch.randint(0, 100, (1, L)), cache=cache)
held = sum(layer.keys.numel() + layer.values.numel() for layer in cache.layers)
assert held == 2 * 2 * L * 64
print(f"cache at {L} tokens: {held:,} floats = 2 x layers x M x C")

# %% [markdown]
# ## Exercises
#
# 1. Write the number of rows projected with and without a cache for a prompt of $P$ tokens and $n$ new ones,
#    and check it against the hook count above for $P = 8$.
# 2. How much memory does the cache of a 32-layer model with $C = 4096$ hold for 4,096 tokens in fp16, per
#    sequence? And with grouped-query attention, 8 key/value heads of 32?
#
# Solutions: `lessons/solutions/12_kv_cache.py`.

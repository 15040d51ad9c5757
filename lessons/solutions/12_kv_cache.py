# %% [markdown]
# # Solutions to lesson 12's exercises

# %% [markdown]
# **1.** With a cache the prompt is projected once and each later step projects one new row: $P + n - 1$
# (the last token is never fed back). Without, step $s$ projects the whole sequence so far, $P + s$ rows:
# $\sum_{s=0}^{n-1} (P + s) = nP + n(n-1)/2$.

# %%
P, n = 8, 40
with_cache = P + n - 1
without = n * P + n * (n - 1) // 2
print(f"P={P}, n={n}: {with_cache} rows with a cache, {without} without")
assert with_cache == 47 and without == sum(P + s for s in range(n))  # the lesson's hook counted these

# %% [markdown]
# **2.** $2 \cdot 32 \cdot 4096 \cdot 4096$ numbers at 2 bytes: 2 GiB per sequence. With 8 key/value heads of 32
# the keys and values are 4x narrower: 512 MiB.

# %%
full = 2 * 32 * 4096 * 4096 * 2
gqa = full * 8 // 32
print(f"{full / 2 ** 30:.1f} GiB, with GQA {gqa / 2 ** 20:.0f} MiB")
assert full == 2 * 2 ** 30 and gqa == 512 * 2 ** 20

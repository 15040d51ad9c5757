# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Lesson 09: FlashAttention, from the online softmax to a Triton kernel
#
# Plain attention writes an $N \times M$ score matrix to memory, reads it back for the softmax, writes the
# probabilities, and reads them again for $PV$. For long sequences that memory traffic, not the arithmetic,
# sets the speed. FlashAttention computes exactly the same output without ever storing the scores. Its one
# idea is the **online softmax**: a softmax you can compute while the row streams past. We build it in three
# steps, each checked against the one before:
#
# 1. the online softmax of one vector, in plain PyTorch;
# 2. blockwise attention (forward and backward) in plain PyTorch, tile by tile;
# 3. minitx's Triton kernel, `minitx.kernels.flash_attention`, run here on the CPU by Triton's interpreter.
#
# The equations (flash.N) are derived in `docs/math/flash_attention.md`.

# %%
import math
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # Triton reads this when it is imported: set it first

from minitx import plots  # noqa: E402
from minitx.kernels import flash_attention as fa  # noqa: E402

FAST = os.environ.get("MINITX_FAST") == "1"
DEVICE = "cpu" if fa.interpreting() else "cuda"
torch.manual_seed(0)

# %% [markdown]
# ## 1. The online softmax (flash.3)
#
# The stable softmax subtracts the row maximum $m$ before exponentiating (flash.2), so it seems to need two
# passes: one for $m$, one for $\ell = \sum_j e^{x_j - m}$. The online version keeps a running maximum and a
# running sum, and whenever the maximum grows it **rescales** the sum so far by $e^{m_\text{old} - m_\text{new}}$:
#
# $$ m \leftarrow \max(m, \max_{j \in T} x_j), \qquad
#    \ell \leftarrow e^{m_\text{old} - m}\,\ell + \sum_{j\in T} e^{x_j - m}. $$
#
# Each old term $e^{x_j - m_\text{old}}$ times $e^{m_\text{old} - m}$ is $e^{x_j - m}$: the rescaling is exact.

# %%
def online_max_and_sum(x: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass over x (..., L) in chunks: the running max m and the running sum l of exp(x - m) (flash.3)."""
    m = torch.full(x.shape[:-1], float("-inf"), dtype=x.dtype)
    l = torch.zeros(x.shape[:-1], dtype=x.dtype)
    for start in range(0, x.shape[-1], chunk):
        tile = x[..., start:start + chunk]
        m_new = torch.maximum(m, tile.amax(-1))
        l = l * torch.exp(m - m_new) + torch.exp(tile - m_new[..., None]).sum(-1)
        m = m_new
    return m, l


x = torch.randn(4, 50, dtype=torch.float64) * 5
x[:, -3:] += 30  # the largest values come last, so the running max jumps late and the sum must be rescaled
m, l = online_max_and_sum(x, chunk=8)
online = torch.exp(x - m[:, None]) / l[:, None]
assert torch.allclose(online, torch.softmax(x, -1), rtol=1e-12, atol=1e-15)
assert torch.allclose(m + l.log(), torch.logsumexp(x, -1), rtol=1e-12)  # the logsumexp L = m + log l (flash.5)
print("online softmax == torch.softmax; max abs diff", (online - torch.softmax(x, -1)).abs().max().item())

# %% [markdown]
# ## 2. Blockwise attention in plain PyTorch
#
# Attention does the same per query row, and it can carry the output along too: the unnormalised
# $a = \sum_j e^{S_{ij} - m} v_j$ is rescaled by the same factor, and divided by $\ell$ once at the end
# (flash.3, flash.4). A "program" owns a tile of query rows and walks the key tiles. With a causal mask, key
# tiles wholly above the diagonal are not even visited (flash.12); key padding and the causal diagonal inside
# a tile are masked to $-\infty$ (flash.10). A row with no allowed key returns zeros (flash.11).

# %%
def blockwise_attention(q, k, v, causal, pad, block_n, block_m):
    """q (N, D), k and v (M, D), pad (M,) True = real key -> out (N, D), lse (N,). One head, in tiles."""
    n, m, scale = q.shape[0], k.shape[0], 1.0 / math.sqrt(q.shape[1])
    out, lse = torch.zeros_like(q), torch.full((n,), float("-inf"), dtype=q.dtype)
    for n0 in range(0, n, block_n):
        rows = torch.arange(n0, min(n0 + block_n, n))
        run_max = torch.full((len(rows),), float("-inf"), dtype=q.dtype)
        run_sum, acc = torch.zeros(len(rows), dtype=q.dtype), torch.zeros(len(rows), q.shape[1], dtype=q.dtype)
        key_end = min(m, n0 + block_n) if causal else m  # (flash.12): later key tiles are all above the diagonal
        for m0 in range(0, key_end, block_m):
            cols = torch.arange(m0, min(m0 + block_m, m))
            s = q[rows] @ k[cols].T * scale                     # (BLOCK_N, BLOCK_M) tile of scores
            allowed = pad[cols][None, :] & ((cols[None, :] <= rows[:, None]) | (not causal))
            s = s.masked_fill(~allowed, float("-inf"))
            new_max = torch.maximum(run_max, s.amax(-1))
            shift = torch.where(torch.isinf(new_max), torch.zeros_like(new_max), new_max)  # (flash.11)
            alpha, p = torch.exp(run_max - shift), torch.exp(s - shift[:, None])
            run_sum = run_sum * alpha + p.sum(-1)
            acc = acc * alpha[:, None] + p @ v[cols]
            run_max = new_max
        empty = run_sum == 0
        out[rows] = acc / torch.where(empty, torch.ones_like(run_sum), run_sum)[:, None]
        lse[rows] = torch.where(empty, float("-inf"), run_max + run_sum.log())
    return out, lse


def plain_attention(q, k, v, causal, pad):
    """The textbook way, with the whole (N, M) score matrix: the reference for the blockwise version."""
    n, m = q.shape[0], k.shape[0]
    allowed = pad[None, :] & (torch.ones(n, m, dtype=torch.bool).tril() if causal else torch.ones(n, m).bool())
    s = (q @ k.T / math.sqrt(q.shape[1])).masked_fill(~allowed, float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)  # an empty row is all -inf: softmax gives NaN, the convention 0
    return p @ v, torch.logsumexp(s, -1)


N, M, D = (40, 50, 16) if FAST else (150, 170, 48)
q, k, v = (torch.randn(rows, D, dtype=torch.float64) for rows in (N, M, M))
pad = torch.ones(M, dtype=torch.bool)
pad[0] = False  # key 0 is padding: with the causal mask, query 0 then sees no key at all
pad[-7:] = False
out_blocks, lse_blocks = blockwise_attention(q, k, v, causal=True, pad=pad, block_n=16, block_m=16)
out_plain, lse_plain = plain_attention(q, k, v, causal=True, pad=pad)
assert torch.allclose(out_blocks, out_plain, atol=1e-12) and torch.equal(out_blocks[0], torch.zeros(D, dtype=q.dtype))
assert torch.equal(torch.isinf(lse_blocks), torch.isinf(lse_plain))
assert torch.allclose(lse_blocks[1:], lse_plain[1:], atol=1e-12)
print("blockwise == plain attention, max abs diff", (out_blocks - out_plain).abs().max().item())

# %% [markdown]
# ### The backward from the logsumexp alone
#
# The forward saved only $L$ per row. The backward rebuilds any tile of probabilities as $P = e^{S - L}$
# (flash.13), and needs one more number per row, $\Delta = \text{rowsum}(dO \circ O)$, which equals
# $\text{rowsum}(dP \circ P)$ (flash.15). Then $dV = P^\top dO$, $dP = dO V^\top$ (flash.14),
# $dS = P \circ (dP - \Delta)$, $dQ = \tau\,dS K$, $dK = \tau\,dS^\top Q$ (flash.16). Here it is on the whole
# matrix (the kernel does it tile by tile), checked against autograd.

# %%
dout = torch.randn(N, D, dtype=torch.float64)
scale = 1.0 / math.sqrt(D)
allowed = pad[None, :] & torch.ones(N, M, dtype=torch.bool).tril()
s = (q @ k.T * scale).masked_fill(~allowed, float("-inf"))
P = torch.exp(s - torch.where(torch.isinf(lse_blocks), 0.0, lse_blocks)[:, None])  # (flash.13)
delta = (dout * out_blocks).sum(-1)                                                 # (flash.15)
assert torch.allclose(delta, ((dout @ v.T) * P).sum(-1), atol=1e-12)               # the identity itself
dS = P * (dout @ v.T - delta[:, None])
grads_by_hand = (scale * dS @ k, scale * dS.T @ q, P.T @ dout)                      # dQ, dK, dV (flash.16)

leaves = [t.clone().requires_grad_() for t in (q, k, v)]
plain_attention(*leaves, causal=True, pad=pad)[0].backward(dout)
for name, mine, auto in zip(("dQ", "dK", "dV"), grads_by_hand, (t.grad for t in leaves)):
    assert torch.allclose(mine, auto, atol=1e-12), name
print("backward from (L, Delta) == autograd")

# %% [markdown]
# ## 3. The Triton kernel
#
# `minitx.kernels.flash_attention` does exactly the above, one Triton program per (query tile, batch x head),
# with three engineering changes: exponentials are `exp2`, with $\log_2 e$ folded into the scale (flash.9);
# the backward is two kernels (dK/dV per key tile, dQ per query tile) that never write the same rows, so it
# needs no atomics and is deterministic; and arbitrary lengths and head dims are handled by masked loads
# (flash.8). Without a GPU it runs under Triton's interpreter: slow, but the same program.
# We run it in float32 on the same inputs and compare with the blockwise version from step 2.

# %%
batch = [t.float()[None, None].to(DEVICE) for t in (q, k, v)]  # (N, D) -> (1, 1, N, D)
leaves = [t.clone().requires_grad_() for t in batch]
out_kernel, lse_kernel = fa.flash_attention(*leaves, causal=True, attention_mask=pad[None].to(DEVICE), return_lse=True)
out_kernel.backward(dout.float()[None, None].to(DEVICE))

out_kernel, lse_kernel = out_kernel[0, 0].double().cpu(), lse_kernel[0, 0].double().cpu()
errors = {"out": (out_kernel - out_blocks).abs().max().item(),
          "lse": (lse_kernel[1:] - lse_blocks[1:]).abs().max().item()}
errors.update({name: (t.grad[0, 0].double().cpu() - ref).abs().max().item()
               for name, t, ref in zip(("dQ", "dK", "dV"), leaves, grads_by_hand)})
print("kernel (float32) vs float64 blockwise, max abs error:")
for name, err in errors.items():
    print(f"  {name:4s} {err:.2e}")
assert all(err < 1e-4 for err in errors.values()), errors  # float32 round-off, nothing more
assert torch.isinf(lse_kernel[0]) and torch.equal(out_kernel[0], torch.zeros(D, dtype=torch.float64))

# %% [markdown]
# ## 4. Which tiles the kernel visits
#
# Each row of tiles below is one program. With the causal mask, the white tiles, wholly above the diagonal,
# are never loaded (flash.12): for $N = M$ that is almost half the work saved. Tiles that cross the diagonal or
# the end of a sequence are computed and masked element by element.

# %%
block_n, block_m = fa.INTERPRETER_BLOCKS["BLOCK_N"], fa.INTERPRETER_BLOCKS["BLOCK_M"]  # the interpreter's tiles
n_show, m_show = 4 * block_n + 5, 5 * block_m  # a size with a ragged last query tile, to see the masking
plots.flash_tiling(n_show, m_show, block_n, block_m, causal=True, path=plots.output_dir() / "09_flash_tiling.png")
visited = sum(math.ceil(min(m_show, n0 + block_n) / block_m) for n0 in range(0, n_show, block_n))  # (flash.12)
total = math.ceil(n_show / block_n) * math.ceil(m_show / block_m)
print(f"N={n_show}, M={m_show}, tiles {block_n}x{block_m}: causal visits {visited} of {total} tiles")
assert visited < total

# %% [markdown]
# ## 5. What users ask of a FlashAttention kernel: a KV cache, shared heads, a window
#
# Decoding with a cache asks the *new* queries (the last $N$ positions) to attend to all $M$ cached keys, so the
# causal diagonal sits at the bottom right: key $j$ is allowed for query $i$ iff $j \le i + M - N$ (flash.10).
# Grouped-query attention lets $G$ query heads share one key/value head, which the kernel reads in place
# (flash.18) where the readable math backend repeats it. A sliding window keeps a band around the diagonal,
# and the kernel splits its key loop into masked edges and an unmasked interior (flash.17). One token decoded
# against a cache must equal the last row of full causal attention:

# %%
from minitx.attention.front_door import attention  # noqa: E402

g = torch.Generator().manual_seed(1)
full_q = torch.randn(1, 4, 40, 16, generator=g).to(DEVICE)      # H = 4 query heads
cache_k, cache_v = (torch.randn(1, 2, 40, 16, generator=g).to(DEVICE) for _ in range(2))  # H_kv = 2
full = attention(full_q, cache_k, cache_v, backend="flash", is_causal=True)
step = attention(full_q[:, :, -1:], cache_k, cache_v, backend="flash", is_causal=True, causal_align="bottom_right")
readable = attention(full_q[:, :, -1:], cache_k, cache_v, backend="math", is_causal=True, causal_align="bottom_right")
print(f"decode step vs last row of full causal: {(step - full[:, :, -1:]).abs().max().item():.1e}; "
      f"vs math: {(step - readable).abs().max().item():.1e}")
assert torch.allclose(step, full[:, :, -1:], atol=1e-5) and torch.allclose(step, readable, atol=1e-5)
windowed = attention(full_q, cache_k, cache_v, backend="flash", is_causal=True, window=(8, 0))
assert torch.allclose(windowed, attention(full_q, cache_k, cache_v, backend="math", is_causal=True, window=(8, 0)),
                      atol=1e-5)

# %% [markdown]
# ## Exercises
#
# 1. Write `online_logsumexp(x, block)`: one pass over blocks of a row, keeping only the running max $m$ and
#    sum $\ell$ (flash.5). Check it against `torch.logsumexp`.
# 2. For a causal $N = M = 1024$ with $64 \times 64$ tiles, how many tiles does the forward skip? Count with the
#    rule in `plots.flash_tiling` and compare with $1/2$.
#
# Solutions: `lessons/solutions/09_flash_attention.py`.

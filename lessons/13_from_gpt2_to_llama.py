# %% [markdown]
# # Lesson 13: from GPT-2 to Llama
#
# GPT-2 (2019) and Llama (2023) are the same machine: token embedding, a stack of pre-norm residual blocks of
# causal self-attention and a feed-forward, a final norm, an LM head. Four parts changed, and each is small
# enough to build by hand:
#
# 1. **RMSNorm** instead of LayerNorm: divide by the root mean square, no centring, no shift (rmsnorm.1).
# 2. **SwiGLU** instead of the GELU MLP: a SiLU-gated product of two projections (swiglu.1), (swiglu.4).
# 3. **RoPE** instead of a learned position table: rotate q and k by their positions inside attention (pos.4).
# 4. **Grouped-query attention**: fewer key/value heads than query heads, so the KV cache shrinks.
#
# (And no biases anywhere.) We build each by hand, check it against minitx's version, then assemble
# `minitx.Llama` and measure on tiny Shakespeare what each part buys against `minitx.GPT`.

# %%
import math
import os

import matplotlib.pyplot as plt
import torch
from einops import rearrange

from minitx import functional as F
from minitx.attention.front_door import attention
from minitx.generation.generate import generate
from minitx.models.gpt import GPT, GPTConfig
from minitx.models.llama import Llama, LlamaConfig
from minitx.nn.feed_forward import FeedForward, SwiGLU
from minitx.nn.norms import RMSNorm
from minitx.plots import output_dir
from minitx.positional.rope import RotaryEmbedding
from minitx.recipes.lm.recipe import compact_ids, lm_batch, shakespeare_text, split_ids, split_loss
from minitx.tokenizers.char import CharTokenizer

FAST = os.environ.get("MINITX_FAST") == "1"
torch.manual_seed(0)
torch.set_num_threads(1)

# %% [markdown]
# ## 1. RMSNorm
#
# LayerNorm subtracts the mean and divides by the standard deviation; RMSNorm only divides by
# $\sqrt{\operatorname{mean}(x^2) + \varepsilon}$ and multiplies by a gain (rmsnorm.1). One reduction per
# row instead of two, and no shift parameter.

# %%
x = torch.randn(4, 10, 32) * 3 + 1
w = torch.rand(32) + 0.5
by_hand = w * x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6)
norm = RMSNorm(32)
with torch.no_grad():
    norm.weight.copy_(w)
assert torch.allclose(by_hand, F.rms_norm(x, w), atol=1e-5)
assert torch.allclose(by_hand, norm(x), atol=1e-5)
assert torch.allclose(by_hand, torch.nn.functional.rms_norm(x, (32,), w, 1e-6), atol=1e-5)
print("RMSNorm by hand == minitx.functional.rms_norm == torch's;",
      f"its output keeps a mean of {by_hand.mean(-1).abs().mean():.2f} (LayerNorm's would be 0)")

# %% [markdown]
# ## 2. SwiGLU
#
# GPT-2's MLP is $W_2\,\mathrm{gelu}(W_1 x)$. Llama's is
# $W_\text{down}(\mathrm{silu}(W_\text{gate} x) \odot W_\text{up} x)$ (swiglu.4): one branch decides how
# much of the other passes. Three matrices instead of two, so at equal parameters its width is
# $\tfrac23$ of the MLP's: $3 C d_\text{ff} = 2 C (4C)$ gives $d_\text{ff} = 8C/3$.

# %%
C = 48
ffn = SwiGLU(C, 8 * C // 3)
mlp = FeedForward(C, 4 * C, bias=False)
h = torch.randn(2, 5, C)
silu = lambda t: t * torch.sigmoid(t)  # noqa: E731  (silu.1)
by_hand = ffn.down_proj(silu(ffn.gate_proj(h)) * ffn.up_proj(h))
assert torch.allclose(ffn(h), by_hand, atol=1e-6)
n_swiglu, n_mlp = (sum(p.numel() for p in m.parameters()) for m in (ffn, mlp))
assert n_swiglu == n_mlp == 8 * C * C
print(f"SwiGLU at d_ff = 8C/3 = {8 * C // 3}: {n_swiglu} weights, the GELU MLP at 4C: {n_mlp}")
xs = torch.linspace(-5, 5, 201)
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(xs, F.silu(xs), label="silu(x) = x sigmoid(x)")
ax.plot(xs, F.gelu(xs), ls="--", label="gelu(x)")
ax.axhline(0, color="k", lw=0.5)
ax.legend()
ax.set_title("the two gates")
fig.tight_layout()
fig.savefig(output_dir() / "13_silu_vs_gelu.png", dpi=110)

# %% [markdown]
# ## 3. RoPE
#
# Instead of adding a position vector to the input, rotate each (q, k) pair of dimensions $(i, i + D/2)$ by
# the angle $p\,\theta_i$, $\theta_i = \text{base}^{-2i/D}$ (pos.4). Then $\langle R(p) q, R(p') k\rangle$
# depends only on $p' - p$ (pos.6): attention sees relative positions, and no table limits the length.

# %%
D = 16
rope = RotaryEmbedding(D, base=10000.0)
q, k = torch.randn(1, 1, 1, D), torch.randn(1, 1, 1, D)


def rotate_by_hand(t, p):
    theta = 10000.0 ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)  # (D/2,)
    cos, sin = torch.cos(p * theta).float(), torch.sin(p * theta).float()
    a, b = t[..., : D // 2], t[..., D // 2:]  # pair i with i + D/2
    return torch.cat([a * cos - b * sin, a * sin + b * cos], -1)


for p in (0, 3, 17):
    assert torch.allclose(rotate_by_hand(q, p), rope.rotate(q, torch.tensor([p])), atol=1e-5)
scores = [float((rotate_by_hand(q, p) * rotate_by_hand(k, p + 5)).sum()) for p in (0, 7, 40)]
assert max(scores) - min(scores) < 1e-4, scores
print("RoPE by hand == RotaryEmbedding; q.k at positions (p, p + 5) for p = 0, 7, 40:", [round(s, 4) for s in scores])

# %% [markdown]
# ## 4. Grouped-query attention
#
# With $H$ query heads and $H_{kv}$ key/value heads, query head $h$ reads key/value head
# $h \div (H / H_{kv})$. By hand: repeat each k/v head $H / H_{kv}$ times and run ordinary attention. The
# library's front door (and the flash kernel) read the shared head without making the copies.

# %%
H, H_kv, N = 8, 2, 6
q, k, v = torch.randn(1, H, N, D), torch.randn(1, H_kv, N, D), torch.randn(1, H_kv, N, D)
k_rep = rearrange(k.unsqueeze(2).expand(1, H_kv, H // H_kv, N, D), "b g r n d -> b (g r) n d")
v_rep = rearrange(v.unsqueeze(2).expand(1, H_kv, H // H_kv, N, D), "b g r n d -> b (g r) n d")
weights = torch.softmax((q @ k_rep.transpose(-1, -2)) / math.sqrt(D) + torch.full((N, N), -math.inf).triu(1), -1)
assert torch.allclose(weights @ v_rep, attention(q, k, v, is_causal=True), atol=1e-5)
print(f"GQA by hand == the front door; the KV cache holds {H_kv} heads instead of {H}: {H // H_kv}x smaller")

# %% [markdown]
# ## 5. Assemble, and check the whole model
#
# `minitx.Llama` is the same `Block` as GPT with these parts. Its greedy generation with the KV cache
# (which now stores $H_{kv}$ heads, after RoPE) equals generation without it. Exactness against Hugging Face's
# `LlamaForCausalLM` is in `tests/test_llama_interop.py`.

# %%
model = Llama(LlamaConfig(vocab_size=65, max_position=64, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2)).eval()
prompt = torch.randint(0, 65, (1, 5))
assert torch.equal(generate(model, prompt, 20, temperature=0), generate(model, prompt, 20, temperature=0,
                                                                         use_cache=False))
cache = model.new_cache()
with torch.no_grad():
    model(prompt, cache=cache)
assert cache[0].keys.shape[1] == 2
print("cached == uncached generation; cache per layer:", tuple(cache[0].keys.shape), "(B, H_kv, M, D)")

# %% [markdown]
# ## 6. What each part buys, on tiny Shakespeare
#
# GPT (minitx's, with biases, learned positions, LayerNorm, GELU MLP) against the Llama, each at the same
# parameter count (the Llama's `d_ff` is chosen to match), same batches, same steps; and four ablations,
# each putting one GPT-2 part back into the Llama. This is a small, quick version; the measured comparison
# at equal CPU budgets with three seeds is `benchmarks/llama_vs_gpt.py` (results:
# `docs/results/llama_vs_gpt.md`).

# %%
text = shakespeare_text()
tok = CharTokenizer.train(text)
ids = compact_ids(tok.encode(text), tok.vocab_size)
train_ids, val_ids = split_ids(ids, 0.1)
val_ids = val_ids[:8_000] if FAST else val_ids
BLOCK, WIDTH = 64, dict(d_model=64, n_layers=2, n_heads=4)
STEPS = 25 if FAST else 600


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def llama_like(target, **parts):
    """A Llama with `parts` swapped, its d_ff chosen so it has `target` parameters (as near as d_ff allows)."""
    def build(d_ff):
        return Llama(LlamaConfig(vocab_size=tok.vocab_size, max_position=BLOCK, d_ff=d_ff, **WIDTH,
                                 **{"n_kv_heads": 2, **parts}))
    per_unit = n_params(build(2)) - n_params(build(1))
    return build(max(1, round(1 + (target - n_params(build(1))) / per_unit)))


def train(model, seed=0):
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.99), weight_decay=0.1)
    curve = []
    for step in range(STEPS):
        batch = lm_batch(train_ids, 16, BLOCK, seed=step)
        loss = model(batch["input_ids"], targets=batch["targets"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        curve.append(float(loss.detach()))
    model.eval()
    return curve, split_loss(model, val_ids, BLOCK)


torch.manual_seed(0)
gpt = GPT(GPTConfig(vocab_size=tok.vocab_size, max_position=BLOCK, **WIDTH))
target = n_params(gpt)
variants = {"gpt": gpt}
ABLATIONS = {"llama": {}, "llama + LayerNorm": {"norm": "layer"}, "llama + GELU MLP": {"feed_forward": "gelu"},
             "llama + learned positions": {"position": "learned"}, "llama without GQA": {"n_kv_heads": 0}}
for name, parts in ABLATIONS.items():
    torch.manual_seed(0)
    variants[name] = llama_like(target, **parts)
results = {}
for name, m in variants.items():
    assert abs(n_params(m) - target) / target < 0.01, (name, n_params(m), target)
    results[name] = train(m)
print(f"{'model':28s} {'params':>8s} {'val loss':>9s}")
for name, (curve, val) in results.items():
    print(f"{name:28s} {n_params(variants[name]):8d} {val:9.4f}")
uniform = math.log(tok.vocab_size)
assert all(val < 0.9 * uniform for _, val in results.values())  # every model learned well past chance
fig, ax = plt.subplots(figsize=(6, 3.6))
for name, (curve, _) in results.items():
    smooth = [sum(curve[max(0, i - 9):i + 1]) / len(curve[max(0, i - 9):i + 1]) for i in range(len(curve))]
    ax.plot(smooth, label=name, lw=2 if name in ("gpt", "llama") else 1)
ax.set_xlabel("step")
ax.set_ylabel("train loss (10-step mean)")
ax.set_title("GPT vs Llama and its ablations, tiny Shakespeare")
ax.legend(fontsize=7)
fig.tight_layout()
fig.savefig(output_dir() / "13_gpt_vs_llama.png", dpi=110)

# %% [markdown]
# With a few steps the differences are within noise; the benchmark's three seeds are what separate a real
# difference from luck. What the lesson shows for certain: each part is a few lines, each equals the
# library's, and the assembled model decodes identically with and without its (smaller) cache.

# %% [markdown]
# ## Exercises
#
# 1. RMSNorm is LayerNorm without the centring (rmsnorm.1). Show that on rows whose mean is already zero the
#    two agree (same weight, no bias, same eps), and that on rows with a mean they do not.
# 2. Why $d_\text{ff} = 8C/3$? Count the parameters of a SwiGLU feed-forward (swiglu.4) and of GPT-2's
#    GELU MLP with $d_\text{ff} = 4C$ (no biases), and check both counts with the library's modules.
# 3. With $H = 8$ query heads of width $D = 64$ and $H_{kv} = 2$, how much smaller is the KV cache than with
#    multi-head attention, and what does the key projection's weight shape become?
#
# Solutions: `lessons/solutions/13_from_gpt2_to_llama.py`.


# %% [markdown]
# # Lesson 04: LayerNorm and residual blocks, post-LN vs pre-LN
#
# An encoder block wraps attention and a feed-forward network in residual connections and LayerNorms
# (docs/math/residual_blocks.md). *Where* the LayerNorm goes matters:
#
# * post-LN (original transformer, BERT): $x \leftarrow \mathrm{LN}(x + \mathrm{Attn}(x))$, then the same with
#   the FFN (block.1)-(block.2);
# * pre-LN (GPT-2 onwards): $x \leftarrow x + \mathrm{Attn}(\mathrm{LN}(x))$, then the same with the FFN
#   (block.3)-(block.4).
#
# We build LayerNorm and both blocks by hand, check minitx agrees, then look inside deep random stacks:
# how big the residual stream gets, and how big the gradient on the top layer is as the stack gets deeper.

# %%
import os

import matplotlib.pyplot as plt
import torch

from minitx import functional as F
from minitx.nn.block import standard_block
from minitx.nn.norms import LayerNorm
from minitx.plots import output_dir

FAST = os.environ.get("MINITX_FAST") == "1"
torch.manual_seed(0)

# %% [markdown]
# ## LayerNorm by hand
#
# Normalise each token's $C$ features to mean 0 and variance 1 (the biased variance), then scale and shift
# (block.5): $\mathrm{LN}(x) = \gamma \odot (x - \mu)/\sqrt{\sigma^2 + \epsilon} + \beta$.

# %%
C = 32
ln = LayerNorm(C)
with torch.no_grad():
    ln.weight.normal_()
    ln.bias.normal_()
x = torch.randn(2, 5, C) * 3 + 1
mu = x.mean(dim=-1, keepdim=True)
var = x.var(dim=-1, unbiased=False, keepdim=True)
by_hand = ln.weight * (x - mu) / torch.sqrt(var + ln.eps) + ln.bias
torch.testing.assert_close(ln(x), by_hand, rtol=1e-5, atol=1e-5)
print("LayerNorm by hand == minitx.nn.norms.LayerNorm")

# %% [markdown]
# ## The two blocks by hand
#
# The same submodules, wired two ways. `standard_block` builds BERT's and GPT-2's block: a `Block` handed its
# parts (a MultiHeadAttention, a GELU FeedForward, a LayerNorm factory) and told where the norm goes; a new
# family hands it other parts instead. (Dropout is 0 here; in training it follows `out_proj` and `fc_out`.)

# %%
for norm_first in (False, True):
    block = standard_block(C, 4, 4 * C, dropout=0.0, norm_first=norm_first).eval()
    attn, ffn = block.attention, block.feed_forward
    ln1, ln2 = block.attention_norm, block.ffn_norm
    if norm_first:
        h = x + attn(ln1(x))
        expected = h + ffn(ln2(h))
    else:
        h = ln1(x + attn(x))
        expected = ln2(h + ffn(h))
    torch.testing.assert_close(block(x), expected)
print("post-LN and pre-LN blocks match their equations")

# %% [markdown]
# ## Deep random stacks
#
# Stack $L$ blocks with Xavier-initialised weights (the setting analysed by Xiong et al. 2020), push a batch
# through, and backpropagate a squared error. A pre-LN stack needs a final LayerNorm; we add one.
#
# Two things to watch:
#
# 1. **The residual stream.** Post-LN renormalises after every sublayer, so every layer's output has norm
#    $\approx\sqrt{C}$. Pre-LN only *adds* to the stream, so it keeps growing, roughly like $\sqrt{\ell}$.
# 2. **The gradient on the top layer.** In pre-LN the final LayerNorm divides by that growing stream, so the
#    top layer's gradient shrinks like $1/\sqrt{L}$; in post-LN it does not shrink at all — it even grows a
#    little with depth (about x1.4 from 2 to 48 blocks in a full run), because every LayerNorm re-amplifies
#    what reaches it. Xiong et al. (2020) argue that large top-layer gradients at step 0 are why post-LN (BERT)
#    needs learning-rate warmup, and why pre-LN trains deep stacks without it. Here we only measure
#    gradients at initialisation; lesson 16 trains both with and without warmup and measures the claim.

# %%
def random_stack(depth: int, norm_first: bool, seed: int) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    stack = torch.nn.Sequential(*[standard_block(C, 4, 4 * C, dropout=0.0, norm_first=norm_first)
                                  for _ in range(depth)])
    for module in stack.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.xavier_normal_(module.weight)
            torch.nn.init.zeros_(module.bias)
    return stack


def probe(depth: int, norm_first: bool, seed: int) -> tuple[list[float], float]:
    """Residual-stream norm after each block, and the gradient norm of the top block's parameters."""
    stack = random_stack(depth, norm_first, seed)
    g = torch.Generator().manual_seed(1000 + seed)
    h = torch.randn(4, 8, C, generator=g)
    stream = []
    for block in stack:
        h = block(h)
        stream.append(h.detach().norm(dim=-1).mean().item())
    out = F.layer_norm(h, None, None) if norm_first else h  # pre-LN's final LayerNorm
    loss = ((out - torch.randn(out.shape, generator=g)) ** 2).mean()
    loss.backward()
    top = torch.cat([p.grad.flatten() for p in stack[-1].parameters()]).norm().item()
    return stream, top


depths = [2, 4, 12] if FAST else [2, 4, 8, 16, 32, 48]
seeds = [0] if FAST else [0, 1, 2]
results = {}
for norm_first in (False, True):
    for depth in depths:
        runs = [probe(depth, norm_first, s) for s in seeds]
        results[norm_first, depth] = (runs[0][0], sum(r[1] for r in runs) / len(runs))

name = {False: "post-LN", True: "pre-LN"}
print(f"{'depth':>5} | top-layer gradient norm: {'post-LN':>8} {'pre-LN':>8}")
for depth in depths:
    print(f"{depth:>5} | {'':>24} {results[False, depth][1]:8.3f} {results[True, depth][1]:8.3f}")

# %% [markdown]
# The claims, checked:

# %%
deepest, shallowest = depths[-1], depths[0]
post_stream, pre_stream = results[False, deepest][0], results[True, deepest][0]
assert all(abs(n - C ** 0.5) < 0.05 for n in post_stream), "post-LN: stream norm pinned at sqrt(C)"
assert pre_stream[-1] > 2 * pre_stream[0], "pre-LN: the residual stream grows with depth"

post_ratio = results[False, deepest][1] / results[False, shallowest][1]
pre_ratio = results[True, deepest][1] / results[True, shallowest][1]
print(f"top-layer gradient, depth {deepest} vs {shallowest}: post-LN x{post_ratio:.2f}, pre-LN x{pre_ratio:.2f} "
      f"(1/sqrt ratio of depths: x{(shallowest / deepest) ** 0.5:.2f})")
assert 0.9 < post_ratio < 2.0, "post-LN: the top layer's gradient does not shrink; it grows only mildly"
assert pre_ratio < 0.6, "pre-LN: the top layer's gradient shrinks as the stack deepens"
assert pre_ratio < 1.5 * (shallowest / deepest) ** 0.5, "pre-LN: about as fast as 1/sqrt(L), or faster"

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
for norm_first, style in ((False, "o-"), (True, "s-")):
    stream = results[norm_first, deepest][0]
    ax1.plot(range(1, len(stream) + 1), stream, style, ms=3, label=name[norm_first])
    ax2.loglog(depths, [results[norm_first, d][1] for d in depths], style, label=name[norm_first])
guide = [results[True, shallowest][1] * (shallowest / d) ** 0.5 for d in depths]
ax2.loglog(depths, guide, "k:", label="~ 1/sqrt(L)")
ax1.set(xlabel="block", ylabel="mean token norm", title=f"residual stream, {deepest} random blocks")
ax2.set(xlabel="depth L", ylabel="||grad|| of the top block", title="top-layer gradient at init")
for ax in (ax1, ax2):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(output_dir() / "04_post_vs_pre_ln.png", dpi=110)

# %% [markdown]
# ## Exercises
#
# 1. Write `layer_norm(x, weight, bias, eps=1e-5)` over the last dimension, and `gelu(x)` (the exact erf form).
#    Checked by the **layer_norm** and **gelu** adapters.
# 2. Use the *unbiased* variance in the LayerNorm by hand. How large is the difference for $C = 32$, and which
#    adapter check would catch it?
# 3. Rerun the depth probe for pre-LN *without* the final LayerNorm. What happens to the top layer's gradient
#    as the stack deepens, and why?
#
# Solutions: `lessons/solutions/04_layernorm_and_residual_blocks.py`.

# %% [markdown]
# # Lesson 11: from a bigram model to GPT
#
# A language model gives the probability of the next token given the ones before it. We start with the
# simplest one, a **bigram** table that looks at one previous character, then build up to a GPT
# (docs/math/decoder.md): the causal mask (dec.2) lets one forward pass predict every next token, the
# next-token loss (dec.4) scores it, and sampling turns the probabilities back into text.
#
# The text is tiny Shakespeare, one id per character, with nanoGPT's split: the first 90% trains, the last
# 10% validates.

# %%
import math
import os

import matplotlib.pyplot as plt
import torch

from minitx.functional import causal_mask
from minitx.generation.generate import generate
from minitx.generation.sampling import sample_next
from minitx.models.gpt import GPT, GPTConfig, next_token_loss
from minitx.plots import output_dir
from minitx.recipes.lm.recipe import lm_batch, shakespeare_text, split_ids
from minitx.seeding import seed_for
from minitx.tokenizers.char import CharTokenizer
from minitx.training.config import TrainConfig
from minitx.training.loop import train

FAST = os.environ.get("MINITX_FAST") == "1"
torch.manual_seed(0)
torch.set_num_threads(1)

text = shakespeare_text()
tok = CharTokenizer.train(text)
ids = torch.tensor(tok.encode(text))
train_ids, val_ids = split_ids(ids)
V = tok.vocab_size
print(f"{len(text):,} characters, V = {V}; train {len(train_ids):,}, validation {len(val_ids):,}")
assert V == 65

# %% [markdown]
# ## The bigram model: count, normalise, score
#
# Count how often character $b$ follows character $a$ in the training text; add one to every count so that
# no pair has probability zero; each row normalised is $p(b \mid a)$. Its loss (dec.4) on the validation
# text is the mean of $-\log p(t_{i+1} \mid t_i)$. A model that knows nothing scores $\log V$.

# %%
counts = torch.ones(V, V)
counts.index_put_((train_ids[:-1], train_ids[1:]), torch.ones(len(train_ids) - 1), accumulate=True)
bigram_logits = counts.log()  # log counts: softmax of a row is the normalised row
bigram_loss = float(next_token_loss(bigram_logits[val_ids[:-1]][None], val_ids[1:][None]))
by_hand = -(counts / counts.sum(1, keepdim=True)).log()[val_ids[:-1], val_ids[1:]].mean()
print(f"uniform: {math.log(V):.3f} nats   bigram: {bigram_loss:.3f} nats")
assert abs(bigram_loss - float(by_hand)) < 1e-4
assert bigram_loss < math.log(V) - 1.0

# %% [markdown]
# ## Looking further back: the causal mask
#
# To use more than one previous character, position $i$ must see positions $1..i$ and never its future:
# otherwise predicting $t_{i+1}$ would be copying it. Attention with the mask $j \le i$ (dec.2) does
# exactly that. The simplest "attention" is the running mean of the past, which the masked softmax of
# all-zero scores computes:

# %%
T = 6
allowed = torch.ones(T, T).tril().bool()
assert torch.equal(allowed, causal_mask(T, T))
weights = torch.softmax(torch.zeros(T, T).masked_fill(~allowed, float("-inf")), dim=-1)
x = torch.randn(T, 3)
assert torch.allclose(weights @ x, x.cumsum(0) / torch.arange(1, T + 1)[:, None])  # the mean of the past
print(weights)

# %% [markdown]
# A GPT learns the scores instead of fixing them at zero, in every head of every block, and adds position
# embeddings (dec.1) so that order is known. Causality is a property we can check: changing a later
# character never changes an earlier prediction.

# %%
config = GPTConfig(vocab_size=V, max_position=64, d_model=64 if FAST else 128, n_layers=2 if FAST else 4,
                   n_heads=4, attention_backend="sdpa")
model = GPT(config)
probe = train_ids[:32][None]
edited = probe.clone()
edited[0, 20] = (edited[0, 20] + 1) % V
with torch.no_grad():
    a, b = model(probe).logits, model(edited).logits
assert torch.allclose(a[0, :20], b[0, :20], atol=1e-6) and not torch.allclose(a[0, 20:], b[0, 20:])

# %% [markdown]
# ## The GPT forward pass, by hand
#
# What does `model(ids)` compute? Write it out with plain tensor operations on the model's own weights
# (docs/math/decoder.md): embeddings (dec.1); per block, pre-LN attention with the causal mask (dec.2) and a GELU
# MLP, each added to the residual stream (block.3)-(block.4); a final LayerNorm; logits against the *same*
# token embedding (tied head, (dec.3)). It must give `minitx.GPT`'s logits.

# %%
def layer_norm(x, w, b, eps):
    mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def gelu(x, tanh_form):
    if tanh_form:  # GPT-2's approximation
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def gpt_forward_by_hand(W, ids, n_layers, n_heads, eps=1e-5, tanh_gelu=False):
    """W: a minitx GPT state_dict. ids (B, N) -> logits (B, N, V)."""
    B, N = ids.shape
    h = W["token.weight"][ids] + W["position.weight"][:N]                         # (dec.1): (B, N, C)
    C = h.shape[-1]
    D = C // n_heads
    future = ~torch.ones(N, N, dtype=torch.bool).tril()                          # (dec.2): j > i is hidden
    for layer in range(n_layers):
        p = lambda name: W[f"blocks.{layer}.{name}"]  # noqa: E731
        x = layer_norm(h, p("attention_norm.weight"), p("attention_norm.bias"), eps)
        q, k, v = (x @ p(f"attention.{n}_proj.weight").T + p(f"attention.{n}_proj.bias") for n in "qkv")
        q, k, v = (t.reshape(B, N, n_heads, D).transpose(1, 2) for t in (q, k, v))  # (B, N, C) -> (B, H, N, D)
        scores = (q @ k.transpose(-2, -1) / math.sqrt(D)).masked_fill(future, float("-inf"))  # (B, H, N, N)
        heads = torch.softmax(scores, dim=-1) @ v                                  # (B, H, N, D)
        merged = heads.transpose(1, 2).reshape(B, N, C)                            # (B, H, N, D) -> (B, N, C)
        h = h + merged @ p("attention.out_proj.weight").T + p("attention.out_proj.bias")      # (block.3)
        x = layer_norm(h, p("ffn_norm.weight"), p("ffn_norm.bias"), eps)
        inner = gelu(x @ p("feed_forward.fc_in.weight").T + p("feed_forward.fc_in.bias"), tanh_gelu)
        h = h + inner @ p("feed_forward.fc_out.weight").T + p("feed_forward.fc_out.bias")    # (block.4)
    h = layer_norm(h, W["final_norm.weight"], W["final_norm.bias"], eps)
    return h @ W["token.weight"].T                                                 # (dec.3), tied


with torch.no_grad():
    by_hand = gpt_forward_by_hand(model.state_dict(), probe, config.n_layers, config.n_heads)
    torch.testing.assert_close(by_hand, model(probe).logits, rtol=1e-4, atol=1e-5)
print("GPT forward by hand == minitx.GPT (logits at all 32 positions)")

# %% [markdown]
# The same function, unchanged, runs Hugging Face's GPT-2 (a small random one here; the real 124M model has
# the same layout). `minitx.interop.gpt2.from_hf_gpt2` renames its weights into minitx's names; GPT-2 uses the
# tanh form of GELU. If transformers is installed (the `[dev]` extra), compare against its logits.

# %%
try:
    import transformers
except ImportError:  # the lesson itself needs only minitx
    transformers = None
    print("transformers not installed: skipping the comparison with Hugging Face GPT-2")
if transformers is not None:
    from minitx.interop.gpt2 import from_hf_gpt2

    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(vocab_size=V, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                        bos_token_id=0, eos_token_id=0)
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    with torch.no_grad():
        hf_logits = hf(probe).logits
        ours_hf = gpt_forward_by_hand(from_hf_gpt2(hf).state_dict(), probe, 2, 4,
                                      eps=hf_config.layer_norm_epsilon, tanh_gelu=True)
    torch.testing.assert_close(ours_hf, hf_logits, rtol=1e-4, atol=1e-4)
    print("GPT forward by hand on GPT-2's weights == transformers.GPT2LMHeadModel")

# %% [markdown]
# ## Training with the next-token loss
#
# Each batch is random 64-character windows; the targets are the same windows shifted by one (dec.4), so
# every position of every window is a training example. minitx's one training loop does the rest.

# %%
steps = 150 if FAST else 1500
batch = lambda step, micro, rank, world: lm_batch(train_ids, 16, 64, seed_for(0, step, micro, rank))  # noqa: E731
val_batches = [lm_batch(val_ids, 32, 64, seed_for(1, i)) for i in range(4 if FAST else 20)]


def val_loss(m):
    return {"loss": sum(float(m(b["input_ids"], targets=b["targets"]).loss) for b in val_batches) / len(val_batches)}


cfg = TrainConfig(lr=2e-3, weight_decay=0.1, betas=(0.9, 0.99), warmup_steps=20, max_steps=steps, schedule="cosine",
                  min_lr_ratio=0.1, log_every=10, eval_every=steps // 5, out_dir="", progress=not FAST)
result = train(model, batch, lambda m, b: (m(b["input_ids"], targets=b["targets"]).loss, {}), cfg, eval_fn=val_loss)
gpt_loss = result.eval_metrics["loss"]
print(f"GPT after {steps} steps: validation loss {gpt_loss:.3f} (bigram {bigram_loss:.3f})")
assert gpt_loss < math.log(V) - 1.0
if not FAST:
    assert gpt_loss < bigram_loss - 0.3  # context beats one character of history

fig, ax = plt.subplots(figsize=(6, 3.4))
train_pts = [(r["step"], r["loss"]) for r in result.history if r["split"] == "train"]
eval_pts = [(r["step"], r["loss"]) for r in result.history if r["split"] == "eval"]
ax.plot(*zip(*train_pts), label="GPT train")
ax.plot(*zip(*eval_pts), marker="o", label="GPT validation")
ax.axhline(bigram_loss, color="gray", ls="--", label="bigram validation")
ax.axhline(math.log(V), color="black", ls=":", label="uniform (log V)")
ax.set_xlabel("step")
ax.set_ylabel("loss (nats)")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(output_dir() / "11_bigram_to_gpt.png", dpi=110)

# %% [markdown]
# ## Sampling: temperature, top-k, top-p
#
# To write, turn the last position's logits into a distribution, draw the next character, append it, repeat.
# Three knobs shape the distribution before the draw (`minitx.generation.sampling.sample_next`):
#
# * **temperature** $T$: $p = \mathrm{softmax}(z / T)$. $T < 1$ sharpens (less surprise, more repetition),
#   $T \to 0$ is greedy decoding (the argmax), $T > 1$ flattens towards uniform.
# * **top-k**: keep only the $k$ most likely tokens, renormalise. It cuts the long tail of unlikely tokens,
#   each rare but together likely enough to derail a long sample.
# * **top-p** (nucleus): keep the smallest set of most likely tokens whose probability reaches $p$,
#   renormalise. Unlike top-k it adapts: few tokens when the model is sure, many when it is not.
#
# First the temperature, through the entropy of the next-character distribution:

# %%
with torch.no_grad():
    last = model(train_ids[:64][None]).logits[0, -1]
entropies = {}
for temperature in (0.5, 1.0, 2.0):
    p = torch.softmax(last / temperature, -1)
    entropies[temperature] = float(-(p * p.log()).sum())
print({t: round(h, 3) for t, h in entropies.items()})
assert entropies[0.5] < entropies[1.0] < entropies[2.0] <= math.log(V)
assert int(sample_next(last[None], temperature=0)) == int(last.argmax())

# %% [markdown]
# Now top-k and top-p by hand: the distribution each leaves, then many draws from the library's sampler, which
# must never leave that set and must hit each kept token about as often as its renormalised probability.

# %%
def top_k_probs(logits, k):
    kept = logits.masked_fill(logits < torch.topk(logits, k).values[-1], float("-inf"))
    return torch.softmax(kept, -1)


def top_p_probs(logits, top_p):
    p = torch.softmax(logits, -1)
    sorted_p, order = p.sort(descending=True)
    before = sorted_p.cumsum(0) - sorted_p             # mass of the more likely tokens
    keep = torch.zeros_like(p, dtype=torch.bool)
    keep[order[before < top_p]] = True                 # smallest prefix reaching top_p
    return torch.where(keep, p, torch.zeros_like(p)) / p[keep].sum()


draws = 4000
for name, want, kwargs in (("top-k 5", top_k_probs(last, 5), dict(top_k=5)),
                           ("top-p 0.9", top_p_probs(last, 0.9), dict(top_p=0.9))):
    g = torch.Generator().manual_seed(0)
    got = sample_next(last[None].expand(draws, V), generator=g, **kwargs)
    freq = torch.bincount(got, minlength=V).float() / draws
    kept = want > 0
    print(f"{name}: keeps {int(kept.sum())} of {V} characters, "
          f"max |frequency - probability| {float((freq - want).abs().max()):.3f} over {draws} draws")
    assert (freq[~kept] == 0).all()                               # never outside the set
    assert float((freq - want).abs().max()) < 4 * math.sqrt(0.25 / draws) + 1e-3  # 4 sigma at worst

# %% [markdown]
# A whole sample: `generate` runs the loop (with a KV cache, lesson 12); the same seed repeats it.

# %%
prompt = torch.tensor([tok.encode("ROMEO:\n")])
sample = generate(model, prompt, 200, temperature=0.8, seed=0)
print(tok.decode(sample[0]))
assert torch.equal(sample, generate(model, prompt, 200, temperature=0.8, seed=0))  # a seed repeats it
nucleus = generate(model, prompt, 200, temperature=0.8, top_p=0.9, seed=0)
print("--- top_p=0.9 ---\n" + tok.decode(nucleus[0]))

# %% [markdown]
# ## Exercises
#
# 1. Write `causal_lm_loss(logits, ids)`: the next-token cross-entropy, mean over $B(N-1)$ predictions.
#    Checked by the **causal_lm_loss** adapter (it catches a loss without the shift).
# 2. Combine temperature and top-p by hand. Does `sample_next` divide by the temperature before or after
#    choosing the nucleus? Find a case where the order changes the kept set.
# 3. Feed `gpt_forward_by_hand` one token at a time, keeping each layer's keys and values: that is lesson 12's
#    cache. Check the last position's logits against the full forward.
#
# Solutions: `lessons/solutions/11_bigram_to_gpt.py`.

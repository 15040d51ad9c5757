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
                  min_lr_ratio=0.1, log_every=10, eval_every=steps // 5, out_dir="", progress=False)
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
# ## Sampling
#
# To write, sample the next character from softmax(logits / temperature) and feed it back. A low
# temperature sharpens the distribution (less surprise, more repetition), temperature 0 is greedy decoding,
# a high one flattens it towards uniform. The entropy of the next-character distribution shows it:

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

prompt = torch.tensor([tok.encode("ROMEO:\n")])
sample = generate(model, prompt, 200, temperature=0.8, seed=0)
print(tok.decode(sample[0]))
assert torch.equal(sample, generate(model, prompt, 200, temperature=0.8, seed=0))  # a seed repeats it

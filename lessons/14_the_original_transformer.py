# %% [markdown]
# # Lesson 14: the original Transformer
#
# "Attention Is All You Need" (Vaswani et al., 2017) was an **encoder-decoder** for translation. The encoder
# reads the whole source with bidirectional self-attention; the decoder writes the target one token at a time
# with causal self-attention, and in between it **cross-attends**: its queries look at the encoder's output.
# This lesson builds that model from the same Block as BERT and GPT, looks at its two masks, trains it on
# minitx's built-in task (dates written many ways -> ISO 8601), decodes greedily and with beam search, and
# draws what each output token looked at in the source. The math: `docs/math/encoder_decoder.md` (tf.*),
# `docs/math/label_smoothing.md` (ls.*), `docs/beam_search.md` (beam.*).

# %%
import math
import os

import matplotlib.pyplot as plt
import torch

import minitx
from minitx.data.dates import date_pairs
from minitx.functional import label_smoothed_cross_entropy
from minitx.models.transformer import Transformer, TransformerConfig
from minitx.nn.block import Block
from minitx.plots import output_dir
from minitx.recipes.seq2seq.data import BOS, EOS, PAD, CharVocab, seq2seq_batch
from minitx.recipes.seq2seq.figures import cross_attention_figure, cross_attention_maps
from minitx.recipes.seq2seq.recipe import Seq2SeqConfig, evaluate_translations, run_seq2seq

FAST = os.environ.get("MINITX_FAST") == "1"
torch.manual_seed(0)
torch.set_num_threads(1)

# %% [markdown]
# ## The model is Blocks
#
# An encoder block is the Block of BERT: self-attention and a feed-forward, each followed by a residual sum and
# a LayerNorm (post-LN, as the paper). A decoder block is the same Block given one more part, a
# `cross_attention`, which sits between the two and reads the encoder's output (the `context`).

# %%
for s, t in date_pairs(4, "train"):
    print(f"{s:>26} -> {t}")
vocab = CharVocab.train(s + t for s, t in date_pairs(2000, "train"))
config = TransformerConfig(vocab_size=vocab.vocab_size, d_model=32, n_heads=4, n_encoder_layers=2,
                           n_decoder_layers=2, d_ff=64, dropout=0.0, max_position=48, pad_token_id=PAD,
                           decoder_start_token_id=BOS, eos_token_id=EOS)
model = Transformer(config).eval()
assert all(isinstance(b, Block) and b.cross_attention is None for b in model.encoder)
assert all(isinstance(b, Block) and b.cross_attention is not None for b in model.decoder)
print(model.decoder[0])

# %% [markdown]
# ## Three masks, two of them in the decoder
#
# The encoder masks only the source padding (tf.2). The decoder's self-attention is causal and masks the
# target padding (tf.3); its cross-attention masks the source padding and nothing else: the whole source is
# known (tf.4). We check each claim on the untrained model, then draw the masks of one padded pair.

# %%
batch = seq2seq_batch([("12 March 1999", "1999-03-12"), ("1.2.2003", "2003-02-01")], vocab, 48)
src, mask, dec = batch["input_ids"], batch["attention_mask"], batch["decoder_input_ids"]
with torch.no_grad():
    logits = model(src, dec, mask).logits
    other = src.masked_fill(mask == 0, vocab.encode("7", eos=False)[0])  # change what hides under padding
    assert torch.allclose(model(other, dec, mask).logits, logits, atol=1e-5)  # (tf.2), (tf.4)
    later = dec.clone()
    later[:, 5] = BOS  # change a later target token
    assert torch.allclose(model(src, later, mask).logits[:, :5], logits[:, :5], atol=1e-5)  # (tf.3)
print("padding is invisible; the decoder never looks ahead")

t, s = dec.shape[1], src.shape[1]
target_real = batch["labels"][1] != -100
fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
panels = [("encoder self-attention (tf.2)", mask[1].bool().expand(s, s)),
          ("decoder self-attention (tf.3)", torch.tril(torch.ones(t, t, dtype=torch.bool)) & target_real),
          ("decoder cross-attention (tf.4)", mask[1].bool().expand(t, s))]
for ax, (title, allowed) in zip(axes, panels):
    ax.imshow(allowed.numpy(), cmap="Greens", vmin=0, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
fig.tight_layout()
fig.savefig(output_dir() / "14_masks.png", dpi=110)

# %% [markdown]
# ## Training: teacher forcing, label smoothing, warmup
#
# The decoder reads the target shifted right by one (tf.6), so one pass trains every position. The loss is
# cross-entropy against a softened target, $1-\varepsilon$ on the right token and $\varepsilon$ spread over
# the vocabulary (ls.1): minitx's hand-written version equals PyTorch's `label_smoothing`. The learning rate
# warms up, then decays as $1/\sqrt{t}$ (tf.8).

# %%
out = model(src, dec, mask)
ours = label_smoothed_cross_entropy(out.logits, batch["labels"], 0.1)
torch_ = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), batch["labels"].flatten(), label_smoothing=0.1)
assert torch.allclose(ours, torch_, atol=1e-6)
print(f"label-smoothed loss at init: {ours.item():.3f} (log V = {math.log(vocab.vocab_size):.3f})")

steps = 60 if FAST else 1500
run_config = Seq2SeqConfig(out_dir="", max_steps=steps, warmup_steps=20 if FAST else 150,
                           n_train=2000 if FAST else 20000, n_eval=16 if FAST else 300, d_model=32 if FAST else 64,
                           d_ff=64 if FAST else 256, batch_size=32 if FAST else 64, progress=False, threads=1)
result = run_seq2seq(run_config)
history = [r for r in result.train.history if r.get("split") == "train"]
first, last = history[0]["loss"], history[-1]["loss"]
print(f"train loss {first:.3f} -> {last:.3f} after {steps} steps")
assert last < first
fig, ax = plt.subplots(figsize=(5, 3))
ax.plot([r["step"] for r in history], [r["loss"] for r in history])
ax.set_xlabel("step")
ax.set_ylabel("label-smoothed loss")
fig.tight_layout()
fig.savefig(output_dir() / "14_loss.png", dpi=110)

# %% [markdown]
# ## Greedy decoding and beam search
#
# `minitx.generate` runs the encoder once, then the decoder token by token over a cache: the target's
# self-attention keys and values grow by one row per step, the cross-attention keys and values of the source
# are projected once (tf.7). Greedy takes the argmax each step. Beam search keeps the 4 best partial outputs and
# the best finished ones, scored by mean log-probability (beam.1)-(beam.6). With one beam it is greedy.

# %%
trained, test = result.model, date_pairs(run_config.n_eval, "test")
report = evaluate_translations(trained, result.vocab, test, num_beams=4, max_length=run_config.max_length)
for name in ("greedy", "beam4"):
    print(f"{name:>7}: exact match {report[name]['exact_match']:5.1f}%  BLEU {report[name]['bleu']:5.1f}")
for source, hypothesis, reference in report["beam4"]["examples"][:3]:
    print(f"{source:>26} -> {hypothesis:<12} (reference {reference})")
src1 = torch.tensor([result.vocab.encode(test[0][0])])
assert torch.equal(minitx.generate(trained, src1, 12, temperature=0),
                   minitx.generate(trained, src1, 12, temperature=0, num_beams=1))
if not FAST:
    assert report["greedy"]["exact_match"] > 80 and report["beam4"]["exact_match"] > 80

# %% [markdown]
# ## What the decoder looked at
#
# Row $i$ of a cross-attention map is the distribution output token $i$ put over the source (tf.4). A trained
# model reads the year's digits while writing the year, and the month's name while writing the month.

# %%
weights, produced, keys = cross_attention_maps(trained, result.vocab, test[0][0])
assert torch.allclose(weights.sum(-1), torch.ones(len(produced)), atol=1e-5)  # each row is a distribution
cross_attention_figure(trained, result.vocab, [s for s, _ in test[:3]], output_dir() / "14_cross_attention.png")
print("saved", output_dir() / "14_cross_attention.png")

# %% [markdown]
# ## Exercises
#
# 1. Label smoothing puts a floor under the loss. With smoothing $\varepsilon$ over $V$ classes, which logits
#    minimise (ls.1), and what is the smallest loss? Check your answer with `label_smoothed_cross_entropy`.
# 2. Beam search by hand (beam.1)-(beam.6): a toy "model" over {BOS, A, B, EOS} whose next-token probabilities
#    depend only on the last token — after BOS: A 0.6, B 0.4; after A: A 0.4, B 0.3, EOS 0.3; after B: EOS 0.9,
#    A 0.05, B 0.05. What do greedy decoding and a beam of 2 return (no length penalty)? Check with
#    `minitx.generation.beam.beam_search`.
# 3. A decoder of $L$ layers generates $G$ tokens from a source of $S$ tokens. How many source rows does
#    cross-attention project to keys and values without the cross-attention cache, and how many with it (tf.7)?
#
# Solutions: `lessons/solutions/14_the_original_transformer.py`.

# %% [markdown]
# # Lesson 15: looking inside a trained model
#
# A trained transformer is a stack of blocks that each read the residual stream and write back into it. The
# hook points of the Block (`minitx.hooks`) let us read every activation on the way (`run_with_cache`) and
# change one (`run_with_hooks`): zero it, replace it by its mean (interp.4), or take it from another input
# (interp.5). That turns "this head looks like it does X" into an experiment: remove the head and see whether X
# is gone. The synthetic language makes the experiment checkable: for `is`/`are` the grammar *knows* which
# word decides the answer (the subject, several words back, past a distracting noun), so a claim about a head
# can be checked against the ground truth.
#
# Three parts: the cache; the heads that carry agreement in an encoder trained on the synthetic language, found
# by their attention to the known cue and tested by ablation; the induction pattern in a small GPT, ablated. The equations are in docs/math/interpretability.md; the same methods on
# minitx's default trained models are in docs/results/interpretability.md.

# %%
import os

import torch
from matplotlib.figure import Figure

from minitx.data.mlm import encode_example
from minitx.data.synthetic import DETERMINERS, SyntheticLanguage
from minitx.interpret.cache import run_with_cache, run_with_hooks
from minitx.interpret.edits import ablate_heads, mean_activation
from minitx.interpret.maps import attention_patterns
from minitx.interpret.scores import induction_scores, previous_token_scores, repeat_losses, repeated_tokens
from minitx.models.bert import BertConfig, BertForMaskedLM
from minitx.models.gpt import GPT, GPTConfig
from minitx.plots import output_dir
from minitx.tokenizers.wordpiece import SPECIAL_TOKENS, WordPieceTokenizer

FAST = os.environ.get("MINITX_FAST") == "1"
torch.manual_seed(0)
torch.set_num_threads(1)

# %% [markdown]
# ## 1. The cache
#
# `run_with_cache` runs the model once and keeps every hook point: each block's residual stream before,
# between and after its sublayers, each head's q, k, v, pattern and output z, the feed-forward activations.
# Nothing is recomputed, so the model's own output can be rebuilt from the cache.

# %%
gpt = GPT(GPTConfig(vocab_size=20, max_position=16, d_model=32, n_layers=2, n_heads=2)).eval()
ids = torch.randint(0, 20, (1, 8))
out, cache = run_with_cache(gpt, ids)
print(len(cache), "activations, e.g.", sorted(cache)[:4])
assert torch.allclose(gpt.final_norm(cache["blocks.1.resid_post"]), out.hidden, atol=1e-6)
stream = cache["blocks.0.resid_pre"] + cache["blocks.0.attn_out"]
assert torch.allclose(stream, cache["blocks.0.resid_mid"], atol=1e-6)  # pre-LN: the stream is a running sum
print("final_norm(last block's output) == the model's hidden state; resid_mid = resid_pre + attn_out")

# %% [markdown]
# ## 2. A head that carries subject-verb agreement
#
# Train BERT's default-size encoder (2 layers, 8 heads) on the synthetic language with one word masked per
# sentence: the copula, whose form (`is` or `are`) the subject decides. Chance is 50 %. A few dozen steps
# suffice, because here the whole loss is about this one dependency.

# %%
lang = SyntheticLanguage(0)
tokenizer = WordPieceTokenizer(list(SPECIAL_TOKENS) + SyntheticLanguage.vocabulary())  # every word whole


def copula_batch(sentences):
    """Token ids with the copula masked, its label, and the ground truth: the subject's position and its
    determiner's (both carry the number) for each sentence."""
    rows, masked, cues = [], [], []
    for s in sentences:
        enc, kinds = encode_example(s, tokenizer, 48)
        where = kinds.index(1)  # kind code 1 = agreement
        subject = next(i for i, w in enumerate(enc.word_ids) if w is not None and s.free.get(w) == "subject")
        determiner = max(i for i in range(subject) if enc.word_ids[i] is not None
                         and s.words[enc.word_ids[i]] in DETERMINERS[0] + DETERMINERS[1])
        rows.append(list(enc.ids))
        masked.append(where)
        cues.append((subject, determiner))
    n = max(map(len, rows))
    ids = torch.full((len(rows), n), tokenizer.pad_id)
    mask = torch.zeros(len(rows), n, dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, :len(row)], mask[b, :len(row)] = torch.tensor(row), 1
    at = torch.tensor(masked)
    labels = torch.full_like(ids, -100)
    labels[torch.arange(len(rows)), at] = ids[torch.arange(len(rows)), at]
    ids[torch.arange(len(rows)), at] = tokenizer.mask_id
    return ids, mask, labels, at, cues


steps, batch = (80, 32) if FAST else (200, 64)
train = lang.sentences(steps * batch, "train")
val_ids, val_mask, val_labels, val_at, val_cues = copula_batch(lang.sentences(300, "validation"))
bert = BertForMaskedLM(BertConfig(vocab_size=tokenizer.vocab_size, d_model=128, n_layers=2, n_heads=8, d_ff=256,
                                  max_position=48, dropout=0.0, attention_dropout=0.0))
optimizer = torch.optim.AdamW(bert.parameters(), lr=2e-3)
for step in range(steps):
    ids, mask, labels, _, _ = copula_batch(train[step * batch:(step + 1) * batch])
    loss = bert(ids, mask, labels=labels).loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
bert.eval()


def accuracy(hooks=None):
    with torch.no_grad():
        logits = run_with_hooks(bert, val_ids, attention_mask=val_mask, hooks=hooks).logits
    rows = torch.arange(len(val_at))
    return float((logits[rows, val_at].argmax(-1) == val_labels[rows, val_at]).float().mean())


trained = accuracy()
print(f"agreement accuracy after {steps} steps: {trained:.1%} (chance 50%)")
assert trained > 0.95

# %% [markdown]
# **Find it by attention.** For every head, how much weight does the masked copula put on the words that decide
# it, the subject noun and its determiner (interp.1)? Uniform attention over ~20 tokens would give ~0.1.

# %%
_, cache = run_with_cache(bert, val_ids, attention_mask=val_mask, names=lambda n: n.endswith("pattern"))
patterns = attention_patterns(cache)  # (L, B, H, N, N)
rows = torch.arange(len(val_at))
subject = torch.tensor([c[0] for c in val_cues])
determiner = torch.tensor([c[1] for c in val_cues])
to_cue = torch.stack([(p[rows, :, val_at, subject] + p[rows, :, val_at, determiner]).mean(0)  # (B, H) -> (H,)
                      for p in patterns])  # (L, H)
print("attention from the masked copula to its subject + determiner, per layer and head (%):")
print((to_cue * 100).round().int())

# %% [markdown]
# **Test it by ablation.** Replace a head's output by its mean over the validation tokens (interp.4): if it is
# what carries the subject's number to the copula, accuracy falls toward 50 %. In this quickly trained model
# several heads look at the cue, and the first surprise is that removing the top one alone changes little:
# the job is done redundantly. So remove the cue-attending heads one by one, most attentive first, and compare
# with removing the same number of the *least* attentive heads (the control). (In the default `minitx pretrain`
# model, trained longer on every kind of word, one head does carry it: ablating it alone brings agreement to
# chance in seed 0, docs/results/interpretability.md.)

# %%
means = {l: mean_activation(bert, f"bert.blocks.{l}.attention.z", val_ids, attention_mask=val_mask) for l in (0, 1)}
order = [divmod(int(i), to_cue.shape[1]) for i in to_cue.flatten().argsort(descending=True)]
single = accuracy(ablate_heads(bert, [order[0]], means))
print(f"ablating only L{order[0][0]}H{order[0][1]}: {single:.1%}")
removed, curve, control = 0, [trained], [trained]
while curve[-1] > 0.6 and removed < 8:
    removed += 1
    curve.append(accuracy(ablate_heads(bert, order[:removed], means)))
    control.append(accuracy(ablate_heads(bert, order[-removed:], means)))
heads = " + ".join(f"L{l}H{h}" for l, h in order[:removed])
print(f"ablating the {removed} most cue-attending heads ({heads}): {curve[-1]:.1%}; "
      f"the {removed} least attending instead: {control[-1]:.1%}")
assert single > 0.9 and curve[-1] < 0.75 and control[-1] > 0.95  # redundant, but these heads carry the number
ablated = curve[-1]

fig = Figure(figsize=(6, 2.6), layout="constrained")
ax = fig.subplots()
im = ax.imshow(to_cue.numpy(), cmap="viridis", vmin=0)
ax.set_xlabel("head")
ax.set_ylabel("layer")
ax.set_title(f"copula -> subject + determiner; ablating the top {removed}: {trained:.0%} -> {ablated:.0%}", fontsize=9)
fig.colorbar(im, ax=ax)
fig.savefig(output_dir() / "15_agreement_head.png", dpi=110)

# %% [markdown]
# ## 3. The induction pattern in a GPT
#
# Train a small GPT on sequences of random tokens repeated once. The first half cannot be predicted (loss
# ~ log V); the second can, by a head that looks back at what followed the current token last time: an
# *induction* head (interp.13). Its score is the attention from position i of the repeat to i - T + 1.
# Watch which layer the head sits in: with T fixed, a layer-0 head can find i - T + 1 by its *offset* alone,
# through the learned positions, and that is what this toy model does (its previous-token scores stay low).
# A true induction head matches *content* and needs a previous-token head before it: that two-layer circuit
# is what the Shakespeare GPT of docs/results/interpretability.md shows, on random repeats it never saw.

# %%
V, T = 24, 10
small = GPT(GPTConfig(vocab_size=V, max_position=2 * T, d_model=32, n_layers=2, n_heads=2))
optimizer = torch.optim.AdamW(small.parameters(), lr=3e-3)
for step in range(100 if FAST else 300):
    x = repeated_tokens(V, T, 64, seed=step + 1)
    loss = small(x[:, :-1], targets=x[:, 1:]).loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
small.eval()
rep = repeated_tokens(V, T, 32, seed=0)
with torch.no_grad():
    out, cache = run_with_cache(small, rep)
patterns = attention_patterns(cache)
induction, previous = induction_scores(patterns, T), previous_token_scores(patterns)
first, repeat = repeat_losses(out.logits, rep, T)
l, h = divmod(int(induction.argmax()), induction.shape[1])
print(f"loss on the first half {first:.2f} (log V = {torch.log(torch.tensor(float(V))):.2f}), on the repeat {repeat:.2f}")
print(f"induction scores:\n{induction}\nprevious-token scores:\n{previous}")
with torch.no_grad():
    _, ablated_repeat = repeat_losses(run_with_hooks(small, rep, hooks=ablate_heads(small, [(l, h)])).logits, rep, T)
print(f"zero-ablating the top induction head L{l}H{h}: loss on the repeat {repeat:.2f} -> {ablated_repeat:.2f}")
assert repeat < first - 1.0 and induction.max() > 0.5 and ablated_repeat > repeat + 0.5

fig = Figure(figsize=(4, 3.6), layout="constrained")
ax = fig.subplots()
ax.imshow(patterns[l, 0, h].numpy(), cmap="viridis")
ax.set_title(f"L{l}H{h} on {T} random tokens x 2: the induction stripe", fontsize=9)
ax.set_xlabel("key")
ax.set_ylabel("query")
fig.savefig(output_dir() / "15_induction_pattern.png", dpi=110)

# %% [markdown]
# ## What to take away
#
# - The cache is the model's own computation; nothing is approximated, so a claim read off it is about the
#   model itself.
# - A pattern is a hypothesis; an ablation (or a patch from another input) is the test. Rollout and attention
#   maps show where information *can* flow, not that it matters.
# - On the synthetic language the ground truth is known, so "this head carries agreement" can be checked:
#   `python benchmarks/interpret_mlm.py` does it on the default `minitx pretrain` model for three seeds, and
#   `minitx explain RUN "text"` draws any run's attention, rollout and logit lens.

# %% [markdown]
# ## Exercises
#
# 1. Attention rollout (interp.2)-(interp.3) by hand: for a 2-layer, 1-head model on 3 tokens, write the two
#    patterns, mix each with the identity at $\alpha = 0.5$, multiply them in the right order, and check your
#    matrix against `attention_rollout`. What does the rollout become at $\alpha = 1$, and why is that useless?
# 2. Build the attention pattern of a *perfect* previous-token head and of a *perfect* induction head on
#    $T = 5$ repeated tokens (one-hot rows), and check that `previous_token_scores` and `induction_scores` give
#    exactly 1 for the head you built and 0 for the other score.
# 3. Zero-ablation replaces a head's output with 0, mean-ablation with its average over a dataset. Why can
#    zero-ablation overstate how much a head matters? (Hint: what does the next LayerNorm see?)
#
# Solutions: `lessons/solutions/15_looking_inside.py`.


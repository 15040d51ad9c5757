# %% [markdown]
# # Lesson 06: masked-language-model pretraining
#
# BERT learns from raw text by a fill-in-the-blanks game. Pick a random 15 % of the tokens $S$ (mlm.2), hide
# them (80 % become `[MASK]`, 10 % a random token, 10 % stay as they are, (mlm.3)), and train the model to
# put back the originals:
#
# $$ \mathcal L(\theta) = -\frac{1}{|S|} \sum_{i \in S} \log p_\theta\big(x_i \mid \tilde x, i\big) \qquad \text{(mlm.1)} $$
#
# No labels are needed, yet to play well the model must learn grammar. On real text it is hard to say *what*
# it learned; on minitx's built-in synthetic language we can, because the generator marks **determined**
# positions: words that the rest of the sentence fixes.
#
# | kind | cue | chance |
# |---|---|---|
# | agreement | `is`/`are` follows the subject noun's number, past distractor nouns | 1/2 |
# | bracket | `)` `]` `}` closes whichever opener began the aside | 1/3 |
# | phrase | `according` → `to`, `in spite` → `of`: the word before | 2/5 |
#
# *Chance* is what a model gets that knows the kind of position but ignores the cue: it always says the most
# common answer. This lesson pretrains a small BERT with `minitx.recipes.pretrain` and checks, per kind, how far above
# chance it gets.

# %%
import os

import torch

from minitx.data.mlm import mlm_batch
from minitx.data.synthetic import FIXED_PHRASES, SyntheticLanguage, chance_baselines
from minitx.plots import accuracy_vs_chance, loss_curve, output_dir
from minitx.recipes.pretrain.config import PretrainConfig
from minitx.recipes.pretrain.fill_mask import fill_mask
from minitx.recipes.pretrain.recipe import masked_lm_loss, run_pretraining
from minitx.tokenizers.wordpiece import WordPieceTokenizer

FAST = os.environ.get("MINITX_FAST") == "1"
OUT = output_dir()
torch.set_num_threads(1)  # a model this small runs fastest on one thread (and two spin-wait on a busy box)

# %% [markdown]
# ## The data, and what masking does to it
#
# A few sentences, with the determined words marked `*like this*`:

# %%
lang = SyntheticLanguage(seed=0)
for s in lang.sentences(4):
    print(" ".join(f"*{w}*" if i in s.determined else w for i, w in enumerate(s.words)),
          "  ", {s.words[i]: kind for i, kind in s.determined.items()})

# %% [markdown]
# One MLM batch (a pure function of seed, step and rank, so a resumed run sees the same batches). Labels are
# the original ids at the selected positions and $-100$ (ignored by the loss) elsewhere.

# %%
sentences = lang.sentences(500)
tok = WordPieceTokenizer.train([s.text for s in sentences], vocab_size=1000)
batch = mlm_batch(sentences, tok, batch_size=4, step=0, seed=0)
row = 0
print("input :", tok.decode(batch["input_ids"][row], skip_special_tokens=False))
print("target:", [tok.vocab[t] for t in batch["labels"][row].tolist() if t != -100])
selected = batch["labels"] != -100
real = batch["attention_mask"].bool() & (batch["special_tokens_mask"] == 0)
print(f"selected {int(selected.sum())} of {int(real.sum())} real tokens in this batch")
assert not (selected & ~real).any(), "only real, non-special tokens are ever selected"

# %% [markdown]
# ## Pretraining
#
# `run_pretraining` is what `minitx pretrain` runs: tokenizer, model, `minitx.training.loop`'s loop with the MLM loss,
# and an evaluation that masks each determined word of held-out sentences *alone* and checks the prediction.

# %%
if FAST:  # seconds: too short to use the cues, long enough to learn *where* each kind of word goes
    sizes = dict(d_model=64, n_layers=2, n_heads=4, d_ff=128, train_sentences=2000, eval_sentences=100,
                 max_steps=150, batch_size=32, lr=5e-3, warmup_steps=15, eval_every=75)
else:  # the recipe's defaults (600 steps, width 128): a minute or two, enough for all three kinds
    sizes = dict(eval_sentences=300)
config = PretrainConfig(**sizes, log_every=10, progress=not FAST, out_dir=str(OUT / "06_pretrain_run"))
result = run_pretraining(config)

# %% [markdown]
# The run directory holds the checkpoint, the tokenizer, `metrics.jsonl` and its own copy of the loss curve.
# Here it is, drawn from the run's history (train loss every 10 steps, held-out loss at each evaluation). The
# loss falls fast at first (the unigram frequencies), then slowly, as the model learns to use context.

# %%
print(sorted(p.name for p in (OUT / "06_pretrain_run").iterdir()))
history = result.train.history
first_loss, last_loss = history[0]["loss"], result.train.metrics["loss"]
print(f"train loss {first_loss:.2f} -> {last_loss:.2f}")
assert last_loss < first_loss
loss_curve(history, keys=("loss",), title="MLM pretraining", path=OUT / "06_loss_curve.png")

# %% [markdown]
# ## The loss (mlm.1) by hand
#
# `run_pretraining` hides the loss inside the loop. Here it is on one fresh batch, by hand: the model's logits
# at every position, keep the $|S|$ selected ones (label $\ne -100$), take the log-softmax with the max
# subtracted (softmax.1), and average (ce.1) $-\log p(x_i)$ of the original tokens. It must equal the recipe's
# `masked_lm_loss` (what the loop minimised) and PyTorch's `cross_entropy` with `ignore_index=-100`. A model that
# knew nothing would pay $\ln V$ per token.

# %%
model, tok = result.model.eval(), result.tokenizer
check = mlm_batch(lang.sentences(64, "validation"), tok, batch_size=16, step=0, seed=123)
with torch.no_grad():
    logits = model(check["input_ids"], check["attention_mask"], check["token_type_ids"]).logits  # (B, N, V)
    S = check["labels"] != -100                                                 # (B, N): the selected set
    z = logits[S]                                                               # (B, N, V) -> (|S|, V)
    z_max = z.max(dim=-1, keepdim=True).values
    log_p = z - z_max - (z - z_max).exp().sum(dim=-1, keepdim=True).log()      # log-softmax (softmax.1)
    by_hand = -log_p[torch.arange(len(z)), check["labels"][S]].mean()           # (mlm.1)
    recipe_loss = masked_lm_loss(model, check)[0]
    torch_loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), check["labels"].flatten(),
                                                   ignore_index=-100)
print(f"(mlm.1) by hand {by_hand:.4f}   recipe {recipe_loss:.4f}   torch {torch_loss:.4f}   "
      f"knowing nothing: ln V = {torch.log(torch.tensor(float(tok.vocab_size))):.2f}   ({int(S.sum())} tokens)")
torch.testing.assert_close(by_hand, recipe_loss, rtol=1e-5, atol=1e-5)
torch.testing.assert_close(by_hand, torch_loss, rtol=1e-5, atol=1e-5)
assert by_hand < torch.log(torch.tensor(float(tok.vocab_size)))

# %% [markdown]
# ## Per kind: right and wrong
#
# Accuracy on the determined positions of held-out sentences, against chance:

# %%
det = result.summary["determined"]
for kind, v in det["per_kind"].items():
    print(f"{kind:<10} {v['accuracy']:6.1%}   chance {v['chance']:6.1%}   ({v['probes']} probes)")
print(f"{'all':<10} {det['accuracy']:6.1%}   chance {det['chance']:6.1%}")
accuracy_vs_chance({k: (v["accuracy"], v["chance"]) for k, v in det["per_kind"].items()},
                   title="determined positions: model vs chance", path=OUT / "06_accuracy_vs_chance.png")
for kind, chance in chance_baselines().items():
    if kind in det["per_kind"]:
        assert det["per_kind"][kind]["chance"] == chance

# %% [markdown]
# Learning comes in two stages. First the model learns *what kind* of word goes where: after `as the king
# said` comes a closing bracket, after a subject and its modifiers a copula, after `according` the word `to`.
# That alone reaches chance, not more. Only then does it learn to *use the cue*: which opener, which number,
# which phrase. The final model has done both, so to *see* the stages we need the evaluations along the way:
# the run probed every kind at every evaluation (`probe_accuracy_<kind>` in its history).

# %%
evals = [r for r in history if r.get("split") == "eval" and "probe_accuracy" in r]
KINDS = list(det["per_kind"])
print("step  " + "  ".join(f"{k:>10}" for k in KINDS))
for r in evals:
    print(f"{r['step']:>4}  " + "  ".join(f"{r[f'probe_accuracy_{k}']:>10.1%}" for k in KINDS))
fig = loss_curve(evals, keys=tuple(f"probe_accuracy_{k}" for k in KINDS), title="probe")
for ax, k in zip(fig.axes, KINDS):
    ax.axhline(det["per_kind"][k]["chance"], color="gray", ls=":", label="chance")
    ax.set_ylim(0, 1.05)
fig.savefig(OUT / "06_stages.png", dpi=110)
assert len(evals) >= 2

# %% [markdown]
# In a full run (evaluations every 150 steps) agreement is learned first (90 % at step 150) while brackets sit
# at chance (31 % against 33 %) and phrases near it (46 % against 40 %); brackets are learned by step 300-450,
# and by step 450 every kind is at 100 %. That is the second stage, *using the cue*, arriving kind by kind.
# Checked below (full run only; in fast mode nothing is learned yet beyond the first stage):

# %%
if not FAST:
    first, final_eval = evals[0], evals[-1]
    bracket_chance = det["per_kind"]["bracket"]["chance"]
    assert abs(first["probe_accuracy_bracket"] - bracket_chance) < 0.1, "stage one: brackets at chance"
    assert final_eval["probe_accuracy_bracket"] > bracket_chance + 0.5, "stage two: brackets learned"
    assert first["probe_accuracy_agreement"] > first["probe_accuracy_bracket"] + 0.3, "agreement comes first"

# %% [markdown]
# The same two stages on single held-out words, with `fill_mask`: is the guess the right *kind* of word (a
# copula, a closing bracket, a phrase's last word), and is it the right word? And how sure is it: the mean
# probability it gives the right word (0 when that is not its top guess).

# %%
ANSWERS = {"agreement": {"is", "are"}, "bracket": {")", "]", "}"},
           "phrase": {p[-1] for p in FIXED_PHRASES}}
right_kind, right_word, wrong, confidence = {}, {}, [], {}
for s in lang.sentences(100, "validation"):
    for i, kind in sorted(s.determined.items()):
        masked = " ".join(s.words[:i] + ["[MASK]"] + s.words[i + 1:])
        guess, prob = fill_mask(model, tok, masked, top_k=1)[0][0]
        confidence.setdefault(kind, []).append(prob if guess == s.words[i] else 0.0)
        right_kind.setdefault(kind, []).append(guess in ANSWERS[kind])
        right_word.setdefault(kind, []).append(guess == s.words[i])
        if guess != s.words[i]:
            wrong.append(f"{kind:<10} wanted {s.words[i]!r:>7}, said {guess!r:>7}:  {masked}")
for kind in right_kind:
    print(f"{kind:<10} right kind of word {sum(right_kind[kind]) / len(right_kind[kind]):6.1%}   "
          f"right word {sum(right_word[kind]) / len(right_word[kind]):6.1%}   "
          f"mean probability of the right word {sum(confidence[kind]) / len(confidence[kind]):.2f}")
print("\n".join(wrong[:6]))
for kind in ("agreement", "phrase"):  # learned first: where a copula and a phrase's last word go
    assert sum(right_kind[kind]) / len(right_kind[kind]) > 0.5, f"{kind}: the model should know the slot's kind"

# %% [markdown]
# Trained for the full run, the model uses all three cues and is far above chance. Brackets come last, and
# they show why initialisation matters: `(`, `[` and `{` occur in identical contexts (always before `as the`),
# so every gradient from their contexts moves their embeddings the same way, and only the small random part
# they started with tells them apart. With BERT's initial std of 0.02 that part is drowned by the shared one
# and brackets sat at chance for over a thousand steps in our tuning runs; `PretrainConfig.init_std=0.05`
# (the recipe's default) keeps the openers distinct and brackets are learned by step ~400
# (docs/results/pretrain_default.md).

# %%
if not FAST:
    per_kind = det["per_kind"]
    assert det["accuracy"] > det["chance"] + 0.2, "pretraining should beat chance on the determined positions"
    for kind in ("agreement", "phrase", "bracket"):
        assert per_kind[kind]["accuracy"] > per_kind[kind]["chance"] + 0.3, kind

# %% [markdown]
# ## Fill-mask
#
# `fill_mask` (the `minitx fill-mask` command) shows the top candidates with their probabilities. The first two
# sentences are ones the language could generate; the third we wrote by hand, shorter than the language's own
# (its asides follow a longer predicate: `... utterly mean and utterly bitter { as the young poets wrote }`).
# In a full run the model still ranks `)` first there, but with probability 0.16, the rest spread over
# adjectives. Accuracy counts only the top guess, so "bracket: 100 %" says nothing about confidence: on the
# held-out sentences the right bracket gets about 0.93 on average (the table above), on this unusual sentence
# far less. A model is sure where its training data was; outside it, read the probabilities.

# %%
for text in ["these cats near the old tree [MASK] happy .",
             "according [MASK] the storm , this king is calm .",
             "every dog is calm ( as the poet said [MASK] ."]:
    preds = fill_mask(model, tok, text, top_k=3)[0]
    print(f"{text:<50}", "  ".join(f"{t} {p:.2f}" for t, p in preds))
    assert abs(sum(p for _, p in preds)) <= 1 + 1e-6 and preds[0][1] >= preds[-1][1]
if not FAST:
    assert fill_mask(model, tok, "according [MASK] the storm , this king is calm .")[0][0][0] == "to"
    top, p_top = fill_mask(model, tok, "every dog is calm ( as the poet said [MASK] .", top_k=1)[0][0]
    bracket_confidence = sum(confidence["bracket"]) / len(confidence["bracket"])
    assert top == ")" and p_top < 0.5 < 0.8 < bracket_confidence, (top, p_top, bracket_confidence)

# %% [markdown]
# ## Exercises
#
# 1. Write `cross_entropy(logits, targets, ignore_index=-100)`: the mean over non-ignored rows, stable for
#    large logits. Checked by the **cross_entropy** adapter.
# 2. Compute the loss of the model that ignores context (each token's training frequency, a unigram model) on
#    the batch used for (mlm.1) above. Where does it fall between $\ln V$ and the trained model?
#
# Solutions: `lessons/solutions/06_mlm_pretraining.py`.

# %% [markdown]
# # Lesson 07: fine-tuning a classifier, and measuring what pretraining buys
#
# The BERT recipe: pretrain an encoder on unlabelled text with the masked-LM objective, then put a small head on
# its `[CLS]` vector and train on labels, (bert.5) in docs/math/bert.md:
#
# $$ \text{logits} = W\, \mathrm{Drop}(h_{[CLS]}) + b . $$
#
# The claim behind it: the pretrained encoder already represents what the task needs, so few labels suffice —
# and LoRA (lora.1), $y = W x + b + s\,BA\,x$ with $W$ frozen, gets there training a small share of the weights.
# This lesson builds the classifier from a pretrained model, checks what LoRA freezes, fine-tunes with
# `minitx.recipes.finetune`, and then *measures* the claim against training from scratch instead of repeating it.

# %%
import copy
import json
import os

import torch

from minitx.models.bert import BertForSequenceClassification
from minitx.peft.lora import apply_lora
from minitx.peft.targets import trainable_parameters_report
from minitx.plots import lesson_dir, method_accuracy, output_dir
from minitx.recipes.finetune.config import FinetuneConfig
from minitx.recipes.finetune.inference import predict
from minitx.recipes.finetune.recipe import run_finetuning
from minitx.recipes.pretrain.config import PretrainConfig
from minitx.recipes.pretrain.recipe import run_pretraining

FAST = os.environ.get("MINITX_FAST") == "1"
OUT = output_dir()
torch.set_num_threads(1)  # small matrices: on a shared machine more threads only spin
# Fast mode: a tiny encoder pretrained for seconds. Otherwise minitx pretrain's defaults (a few minutes).
PRETRAIN = (dict(max_steps=150, train_sentences=3000, eval_sentences=100, d_model=32, n_heads=2, d_ff=64,
                 vocab_size=400, eval_every=0, batch_size=32) if FAST else {})
pre = run_pretraining(PretrainConfig(out_dir=str(OUT / "pretrain"), progress=not FAST, **PRETRAIN))

# %% [markdown]
# ## The classifier: a copied encoder and a new head
#
# `BertForSequenceClassification.from_pretrained_mlm` copies the encoder (embeddings and blocks) and draws a new
# head. The MLM head (dense, LayerNorm, tied decoder) is left behind: it predicted tokens, not labels.

# %%
clf = BertForSequenceClassification.from_pretrained_mlm(pre.model, num_labels=2, use_pooler=False, seed=0)
pretrained_encoder = pre.model.bert.state_dict()
assert all(torch.equal(v, pretrained_encoder[k]) for k, v in clf.bert.state_dict().items())
print("encoder copied exactly:", len(pretrained_encoder), "tensors")

# %% [markdown]
# ## One classifier step, by hand
#
# What does one training step of the classifier do? On three labelled sentences (dropout off): take the
# encoder's `[CLS]` vectors $h$ (B, C), the logits $z = hW^\top + b$ (bert.5), the cross-entropy
# $L = -\frac1B\sum_i \log \mathrm{softmax}(z_i)_{y_i}$, and its gradient on the head. Because
# $\partial L / \partial z = (\mathrm{softmax}(z) - \mathrm{onehot}(y))/B =: G$ (ce.2), the head's gradients are
# $\partial L/\partial W = G^\top h$ and $\partial L/\partial b = \sum_i G_i$. Check both against autograd
# through the model, then step the head by hand and see the loss fall.

# %%
step_model = copy.deepcopy(clf).eval()  # a copy: the rest of the lesson starts from the untouched head
enc = pre.tokenizer.encode_batch(["the dog is happy .", "the kings are not cruel .", "the song is not wonderful ."])
y = torch.tensor([1, 1, 0])
h = step_model.bert(enc["input_ids"], enc["attention_mask"])[:, 0].detach()  # (B, N, C) -> (B, C): [CLS]
W, b = step_model.classifier.weight, step_model.classifier.bias
z = h @ W.detach().T + b.detach()                                               # (bert.5): (B, 2)
p = torch.softmax(z, dim=-1)
loss_by_hand = -p[torch.arange(3), y].log().mean()
G = (p - torch.nn.functional.one_hot(y, 2)) / 3                                  # dL/dz, (B, 2)
out = step_model(enc["input_ids"], enc["attention_mask"], labels=y)
out.loss.backward()
torch.testing.assert_close(out.loss, loss_by_hand)
torch.testing.assert_close(W.grad, G.T @ h)
torch.testing.assert_close(b.grad, G.sum(0))
with torch.no_grad():  # one small plain gradient step (rate 0.02) on the head alone
    W -= 0.02 * W.grad
    b -= 0.02 * b.grad
after_step = step_model(enc["input_ids"], enc["attention_mask"], labels=y).loss
print(f"loss {loss_by_hand:.4f} (by hand == model), gradients by hand == autograd; after one step: {after_step:.4f}")
assert after_step < loss_by_hand

# %% [markdown]
# ## LoRA: what trains, and why the model starts where pretraining left it
#
# `apply_lora` here wraps the query and value projections only (the LoRA paper's choice); $B$ starts at zero, so
# at step 0 the wrapped model computes exactly what the plain one did, bit for bit. Only $A$, $B$ and the head
# will train: a few per cent of the weights. (The recipe below wraps *every* projection of every block, its
# default `lora_targets`, so it trains a larger share: on this task query/value alone stayed at chance.)

# %%
batch = pre.tokenizer.encode_batch(["the dog is happy .", "the kings are not cruel ."])
clf.eval()
with torch.no_grad():
    before = clf(batch["input_ids"], batch["attention_mask"]).logits
apply_lora(clf, ["q_proj", "v_proj"], r=8, alpha=16, trainable_modules=("classifier",))
with torch.no_grad():
    after = clf(batch["input_ids"], batch["attention_mask"]).logits
trainable, total, share = trainable_parameters_report(clf)
print(f"LoRA r=8 on q_proj, v_proj: {trainable:,} of {total:,} parameters train ({share:.2%})")
assert torch.equal(before, after), "a fresh LoRA (B = 0) must not change the model"
assert share < 0.10

# %% [markdown]
# ## Fine-tuning with the recipe
#
# `run_finetuning` does the above, trains on the shared loop with validation and early stopping, restores the
# best validation weights, and tests on held-out sentences. We fine-tune with LoRA and check the frozen
# encoder weights came back byte-equal: LoRA's whole change lives in $A$, $B$ and the head.

# %%
STEPS = dict(max_steps=60, eval_every=10, n_test=400, n_validation=100) if FAST else {}
lora = run_finetuning(FinetuneConfig(from_checkpoint=str(OUT / "pretrain"), method="lora", n_train_labels=256,
                                     out_dir=str(OUT / "lora"), progress=not FAST, **STEPS))
print(f"the recipe's LoRA (r=8 on every projection) trains {lora.summary['trainable_share']:.2%} of the weights")
weights = dict(lora.model.named_parameters())
for name, value in pretrained_encoder.items():
    wrapped = f"bert.{name}".replace("q_proj.weight", "q_proj.base.weight").replace("v_proj.weight", "v_proj.base.weight")
    if wrapped in weights:
        assert torch.equal(weights[wrapped], value), f"{wrapped} changed"
print(predict(lora.model, lora.tokenizer, ["the song is wonderful .", "the song is not wonderful ."]))

# %% [markdown]
# ## Measuring the claim: pretrained vs from scratch, few labels vs many
#
# Same architecture and tokenizer, the same labelled sentences and test set; the only difference is where the
# encoder's weights start. The label is "the adjective is positive, xor the sentence is negated", over 64
# adjectives (docs/data.md): with 64 labels a model sees each adjective about once, so it can only generalise
# to the others if its encoder already knows which adjectives are positive. With thousands of labels every
# adjective is seen many times — and yet, in a full run, the model trained from scratch stays at chance
# (50.5 % at 4,096 labels) while the pretrained one reaches 100 %. More labels do not help scratch because
# the label is an **xor**: neither the adjective's polarity nor the negation predicts it alone (each splits
# the labels 50/50), so at the start no gradient points towards learning either one; a model must already
# represent one of the two for the other to pay off. The pretrained encoder already separates the polarities
# (the probe below), so only the interaction with `not` is left to learn.
#
# In fast mode the encoder is tiny and trained for seconds, so the bars below are a smoke test, not evidence;
# without MINITX_FAST the lesson pretrains with the default recipe and checks the gap at 4,096 labels.

# %%
BUDGETS = [64, 1024] if FAST else [64, 4096]
COMPARE = dict(max_steps=40, eval_every=10, n_test=400, n_validation=100) if FAST else dict(max_steps=600,
                                                                                               patience=0)
accuracies: dict[str, dict[str, list[float]]] = {}
for budget in BUDGETS:
    row = accuracies.setdefault(f"{budget} labels", {})
    for name, start in (("scratch", None), ("pretrained", str(OUT / "pretrain"))):
        paths = {} if start else {"model_config": str(OUT / "pretrain" / "model_config.json"),
                                  "tokenizer": str(OUT / "pretrain" / "tokenizer.json")}
        config = FinetuneConfig(from_checkpoint=start, method="full", n_train_labels=budget, out_dir="",
                                progress=not FAST, **paths, **COMPARE)
        row[name] = [run_finetuning(config).summary["test_accuracy"]]
method_accuracy(accuracies, title="full fine-tuning: scratch vs pretrained",
                path=OUT / "07_scratch_vs_pretrained.png")
print(json.dumps(accuracies))
if not FAST:  # many labels: the pretrained encoder learns the xor, scratch stays at chance
    many = accuracies[f"{BUDGETS[-1]} labels"]
    assert many["pretrained"][0] > 0.9 and many["scratch"][0] < 0.6, many

# %% [markdown]
# ## What the full experiment found
#
# `benchmarks/peft_experiment.py` runs the comparison properly: the default pretraining recipe, six methods
# (scratch, full, LoRA r=4 and r=8, adapters, BitFit), 64 and 256 labels, three seeds each
# (benchmarks/results/peft_experiment.md). It also *probes* the encoder before any label: can the 64
# adjectives' input embeddings be told apart by polarity (leave-one-out nearest centroid)?
#
# What it found, checked below. The pretraining text sometimes says `truly kind` or `utterly cruel` (the labelled
# sentences never do), and that is enough: after pretraining the embeddings separate the polarities perfectly,
# where random ones do not. With 256 labels, LoRA r=8 on every projection of that encoder — 7.9 % of the
# weights — reaches 90 % to 99 % depending on the seed (r=4, 4.1 %, does as well), while the same model trained
# from scratch stays at chance on every seed (the xor, above). With
# 64 labels every method is still close to chance: learning the flip by negation takes more examples. Earlier
# corpora, without the intensifiers, taught pretraining nothing about polarity, and then no method beat chance at
# all (docs/finetuning.md keeps those measurements). A claim measured, not repeated.

# %%
RESULTS = lesson_dir().parent / "benchmarks" / "results" / "peft_experiment.json"  # in the repository, not pip
if not RESULTS.exists():
    raise FileNotFoundError(f"this section reads {RESULTS}: run the lesson from a clone of the minitx repository")
exp = json.loads(RESULTS.read_text())
probe = exp["probe"]
print("probe before fine-tuning:", probe)
for budget, methods in exp["summary"].items():
    print(f"{budget:>4} labels:", {m: f"{v['mean']:.3f} ± {v['std']:.3f}" for m, v in methods.items()})
assert probe["pretrained"]["embedding_polarity_accuracy"] > 0.9 > probe["random"]["embedding_polarity_accuracy"]
runs = exp["runs"]
lora = [r["test_accuracy"] for r in runs if r["method"] == "LoRA r=8" and r["budget"] == 256]
scratch = [r["test_accuracy"] for r in runs if r["method"] == "scratch (full)" and r["budget"] == 256]
assert len(lora) == len(scratch) >= 3 and min(lora) > max(scratch) + 0.2, (lora, scratch)
r8 = exp["summary"]["256"]["LoRA r=8"]
print(f"LoRA r=8 trains {r8['trainable_share']:.1%} of the weights; at 256 labels: {sorted(lora)} per seed")
assert 0.075 < r8["trainable_share"] < 0.085 and 0.89 < min(lora) and max(lora) < 1.0
assert all(abs(a - 0.5) < 0.05 for a in scratch)
few = [v["mean"] for v in exp["summary"]["64"].values()]
assert all(abs(m - 0.5) < 0.08 for m in few), few
print("checked: at 256 labels pretrained + LoRA beats scratch on every seed; at 64 all methods are near chance")

# %% [markdown]
# ## Exercises
#
# 1. Extend the classifier step by hand one layer down: the gradient on the `[CLS]` vector is $G W$. Check it
#    against autograd (make $h$ a leaf that requires grad).
# 2. Compare LoRA on `q_proj`/`v_proj` only with the recipe's default (every projection) at 256 labels, with
#    `FinetuneConfig(lora_targets=[...])`. Does query/value alone leave chance?
#
# Solutions: `lessons/solutions/07_finetuning_a_classifier.py`.

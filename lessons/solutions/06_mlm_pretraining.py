# %% [markdown]
# # Solutions to lesson 06's exercises

# %%
import math

import torch

from minitx import functional as mf


# %% [markdown]
# **1.** (adapter **cross_entropy**): log-softmax with the max subtracted, then the mean over kept rows.

# %%
def cross_entropy(logits, targets, ignore_index=-100):
    keep = targets != ignore_index
    z = logits[keep]
    z = z - z.max(-1, keepdim=True).values
    log_p = z - z.exp().sum(-1, keepdim=True).log()
    return -log_p[torch.arange(len(z)), targets[keep]].mean()


logits = torch.randn(10, 7) * 100  # large: without the max, exp overflows in float32
targets = torch.tensor([0, 1, 2, -100, 4, 5, 6, -100, 1, 2])
torch.testing.assert_close(cross_entropy(logits, targets), torch.nn.functional.cross_entropy(logits, targets))
torch.testing.assert_close(cross_entropy(logits, targets), mf.cross_entropy(logits, targets))

# %% [markdown]
# **2.** The unigram model's loss is the entropy-like average $-\log f(x_i)$ of the selected tokens under
# the training frequencies $f$. It sits between $\ln V$ (knowing nothing) and the trained model (which uses
# context). In the lesson's batch, with the run's tokenizer (`result`, `check` and `tok` from lesson 06):
#
# ```python
# counts = torch.ones(tok.vocab_size)
# for s in lang.sentences(2000):
#     counts += torch.bincount(torch.tensor(tok.encode(s.text).ids), minlength=tok.vocab_size)
# log_f = (counts / counts.sum()).log()
# unigram = -log_f[check["labels"][check["labels"] != -100]].mean()
# ```
#
# The recipe's evaluation computes the same baseline on real text (`unigram_loss` in its metrics). Here, on a
# toy distribution, the ordering the lesson's numbers show:

# %%
torch.manual_seed(0)
V = 50
freq = torch.softmax(torch.randn(V) * 2, 0)
tokens = torch.multinomial(freq, 5000, replacement=True)
unigram_loss = -freq.log()[tokens].mean().item()
print(f"ln V {math.log(V):.2f} > unigram {unigram_loss:.2f}")
assert unigram_loss < math.log(V)

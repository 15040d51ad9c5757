# %% [markdown]
# # Solutions to lesson 07's exercises

# %%
import torch

# %% [markdown]
# **1.** $z = hW^\top + b$, so $\partial L/\partial h = G W$ with $G = (\mathrm{softmax}(z) - \mathrm{onehot}(y))/B$.
# Checked on a stand-in head (the lesson's `h`, `W`, `b`, `y` work the same way):

# %%
torch.manual_seed(0)
B, C = 3, 16
h = torch.randn(B, C, requires_grad=True)
head = torch.nn.Linear(C, 2)
y = torch.tensor([1, 1, 0])
loss = torch.nn.functional.cross_entropy(head(h), y)
loss.backward()
G = (torch.softmax(head(h), -1) - torch.nn.functional.one_hot(y, 2)) / B
torch.testing.assert_close(h.grad, (G @ head.weight).detach())
print("dL/dh = G W, by hand == autograd")

# %% [markdown]
# **2.** The run (about a minute without MINITX_FAST; it needs the pretrained run of lesson 07 in
# `lessons/output/pretrain`):
#
# ```python
# from minitx.recipes.finetune.config import FinetuneConfig
# from minitx.recipes.finetune.recipe import run_finetuning
# for targets in (["q_proj", "v_proj"], None):
#     extra = {} if targets is None else {"lora_targets": targets}
#     cfg = FinetuneConfig(from_checkpoint="lessons/output/pretrain", method="lora", n_train_labels=256,
#                          out_dir="", progress=False, **extra)
#     print(targets or "every projection", run_finetuning(cfg).summary["test_accuracy"])
# ```
#
# On the built-in task query/value alone stays near chance, every projection leaves it: the recipe's default
# `lora_targets` records that finding (`minitx finetune --help`). The polarity the task needs sits in the
# feed-forward layers and values of the pretrained encoder as much as in attention's query/value maps.

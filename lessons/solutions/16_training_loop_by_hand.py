# %% [markdown]
# # Solutions to lesson 16's exercises

# %%
import math

import torch
from torch import nn

from minitx.training.config import TrainConfig
from minitx.training.optim import lr_at


# %% [markdown]
# **1.** (adapter **adamw**)

# %%
class MyAdamW:
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        self.params, self.lr, self.betas, self.eps, self.wd = list(params), lr, betas, eps, weight_decay
        self.t, self.m, self.v = 0, {}, {}

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self):
        self.t += 1
        b1, b2 = self.betas
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            m = self.m.setdefault(i, torch.zeros_like(p)).mul_(b1).add_((1 - b1) * p.grad)
            v = self.v.setdefault(i, torch.zeros_like(p)).mul_(b2).add_((1 - b2) * p.grad ** 2)
            p.mul_(1 - self.lr * self.wd)                                                     # (opt.2): decoupled
            p.sub_(self.lr * (m / (1 - b1 ** self.t)) / ((v / (1 - b2 ** self.t)).sqrt() + self.eps))


def get_adamw_cls():
    return MyAdamW


torch.manual_seed(0)
a, b = nn.Linear(4, 3).double(), nn.Linear(4, 3).double()
b.load_state_dict(a.state_dict())
opts = (get_adamw_cls()(a.parameters(), lr=0.1, weight_decay=0.1), torch.optim.AdamW(b.parameters(), lr=0.1, weight_decay=0.1))
x = torch.randn(8, 4, dtype=torch.float64)
for _ in range(5):
    for model, opt in zip((a, b), opts):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
for p, q in zip(a.parameters(), b.parameters()):
    torch.testing.assert_close(p, q)


# %% [markdown]
# **2.** (adapters **cosine_schedule** and **gradient_clipping**)

# %%
def lr_cosine_schedule(step, max_lr, min_lr, warmup_steps, total_steps):
    if step < warmup_steps:
        return max_lr * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + (max_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def clip_gradients(params, max_norm):
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
    scale = min(1.0, max_norm / (norm.item() + 1e-6))
    for g in grads:
        g.mul_(scale)


cfg = TrainConfig(lr=1.0, warmup_steps=10, max_steps=100, schedule="cosine", min_lr_ratio=0.1)
assert all(math.isclose(lr_cosine_schedule(s, 1.0, 0.1, 10, 100), lr_at(s, cfg), abs_tol=1e-12) for s in range(120))
w = torch.ones(3, requires_grad=True)
w.grad = torch.tensor([3.0, 4.0, 0.0])
clip_gradients([w], 1.0)
torch.testing.assert_close(w.grad, torch.tensor([0.6, 0.8, 0.0]), rtol=1e-5, atol=1e-6)

# %% [markdown]
# **3.** Two results worth finding yourself, in the lesson's experiment:
#
# * With SGD + momentum 0.9 at the same rate 0.02 (swap `AdamW(...)` for
#   `torch.optim.SGD(model.parameters(), lr=RATE, momentum=0.9)` in `train_copy_first`) the three setups end
#   alike — seed 0, last 20 of 100 steps: post-LN 2.54 without warmup, 2.58 with, pre-LN 2.55 (chance 2.77).
#   SGD's step is the raw gradient, small here, not Adam's normalised one of size about $\eta$ per weight:
#   nothing stalls, and nothing learns much in 100 steps either. The failure warmup prevents is Adam's
#   full-size steps while the post-LN gradients are still large and noisy.
# * Without bias correction the first Adam step is $\eta (1-\beta_1) g / (\sqrt{1-\beta_2}\,|g|)$ instead of
#   $\eta\,\mathrm{sign}(g)$: with $\beta = (0.9, 0.999)$ that is $0.1/0.0316 \approx 3.16$ times *larger*.
#   A built-in burst at step 1, exactly what warmup is there to avoid:

# %%
g = torch.tensor([0.3])
b1, b2, lr = 0.9, 0.999, 1.0
corrected = lr * ((1 - b1) * g / (1 - b1)) / (((1 - b2) * g ** 2 / (1 - b2)).sqrt())
uncorrected = lr * ((1 - b1) * g) / (((1 - b2) * g ** 2).sqrt())
print(f"first step, bias-corrected {corrected.item():.3f}, uncorrected {uncorrected.item():.3f}")
assert math.isclose(uncorrected.item() / corrected.item(), 0.1 / math.sqrt(0.001), rel_tol=1e-6)

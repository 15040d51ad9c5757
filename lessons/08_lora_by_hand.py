# %% [markdown]
# # Lesson 08: LoRA by hand
#
# A pretrained layer computes $y = W_0 x + b$. Fine-tuning would change all of $W_0$; **LoRA** freezes it and
# learns a low-rank correction instead (docs/math/lora.md, (lora.1)):
#
# $$ y = W_0 x + b + s\, B A\, x, \qquad A \in \mathbb{R}^{r \times d_{in}},\; B \in \mathbb{R}^{d_{out} \times r},
#    \qquad s = \alpha / r. $$
#
# The toy problem: a "pretrained" layer $W_0$ and a "task" whose ideal weight is $W_\star = W_0 + \Delta$, with
# $\Delta$ of rank 4. We write LoRA by hand with plain tensors, check that `minitx.peft.lora.LoRALinear` (whose
# backward is hand-written too) agrees, then see what the rank $r$ and the scale $\alpha$ do, and finally merge
# the update into $W_0$ for inference.

# %%
import os

import matplotlib.pyplot as plt
import torch
from torch import nn

from minitx.peft.lora import LoRALinear, apply_lora, merge_lora
from minitx.peft.targets import parameter_table
from minitx.plots import loss_curve, output_dir

FAST = os.environ.get("MINITX_FAST") == "1"
STEPS = 150 if FAST else 600
torch.manual_seed(0)
torch.set_num_threads(1)  # the matrices here are tiny: extra threads only add overhead

D_IN, D_OUT, TRUE_RANK, N = 32, 24, 4, 512
pretrained = nn.Linear(D_IN, D_OUT)
true_sv = torch.tensor([3.0, 2.0, 1.0, 0.5])  # the task's update has exactly these singular values
U, _ = torch.linalg.qr(torch.randn(D_OUT, TRUE_RANK))
V, _ = torch.linalg.qr(torch.randn(D_IN, TRUE_RANK))
delta_true = U @ torch.diag(true_sv) @ V.T  # (D_OUT, D_IN), rank 4

x_train = torch.randn(N, D_IN)
with torch.no_grad():
    y_train = pretrained(x_train) + x_train @ delta_true.T  # the task: W* = W0 + Delta

# %% [markdown]
# ## LoRA written by hand
#
# $A$ starts random (kaiming-uniform, as PEFT), $B$ starts at **zero**, so at step 0 the model is exactly the
# pretrained one. A consequence (lora.2): $\partial L/\partial A = s\,B^\top G^\top X = 0$ on the first step,
# while $\partial L/\partial B = s\,G^\top X A^\top \neq 0$. Only $B$ moves first.

# %%
def hand_lora_forward(x, W0, b0, A, B, s):
    """(lora.1) with plain tensors; the rank-r bottleneck x A^T is computed first."""
    return x @ W0.T + b0 + s * (x @ A.T) @ B.T


r, alpha = 4, 8.0
s = alpha / r
W0, b0 = pretrained.weight.detach(), pretrained.bias.detach()
A = torch.empty(r, D_IN)
nn.init.kaiming_uniform_(A, a=5**0.5)
A.requires_grad_(True)
B = torch.zeros(D_OUT, r, requires_grad=True)

loss = ((hand_lora_forward(x_train, W0, b0, A, B, s) - y_train) ** 2).mean()
loss.backward()
print(f"first step: |dL/dA| = {A.grad.abs().max():.3g}, |dL/dB| = {B.grad.abs().max():.3g}")
assert torch.equal(A.grad, torch.zeros_like(A)) and B.grad.abs().max() > 0

opt = torch.optim.Adam([A, B], lr=1e-2)
for step in range(40):  # a little hand training, so that B != 0 for the comparison below
    opt.zero_grad()
    ((hand_lora_forward(x_train, W0, b0, A, B, s) - y_train) ** 2).mean().backward()
    opt.step()

# %% [markdown]
# ## The library agrees
#
# Copy the same $A$ and $B$ into `LoRALinear` wrapping the same frozen layer: same outputs, and its hand-written
# backward ((lora.2)–(lora.4)) gives the same gradients as autograd through our hand formula.

# %%
layer = LoRALinear(nn.Linear(D_IN, D_OUT), r=r, alpha=alpha)
with torch.no_grad():
    layer.base.load_state_dict(pretrained.state_dict())
    layer.lora_A.copy_(A)
    layer.lora_B.copy_(B)
A.grad, B.grad = None, None
x_probe = torch.randn(16, D_IN)
hand_out = hand_lora_forward(x_probe, W0, b0, A, B, s)
lib_out = layer(x_probe)
torch.testing.assert_close(lib_out, hand_out)
hand_out.square().sum().backward()
lib_out.square().sum().backward()
torch.testing.assert_close(layer.lora_A.grad, A.grad)
torch.testing.assert_close(layer.lora_B.grad, B.grad)
print("LoRALinear == hand-written LoRA (outputs and gradients)")

# %% [markdown]
# ## What the rank does
#
# $sBA$ has rank at most $r$. By Eckart–Young the best rank-$r$ approximation of $\Delta$ drops its singular
# values beyond the $r$-th, so with $x \sim \mathcal N(0, I)$ the *expected* loss cannot go below
# $\sum_{k > r} \sigma_k^2 / d_{out}$. Ranks below 4 must plateau there; ranks 4 and up can reach zero.
#
# "Expected" matters: the floor is for fresh inputs drawn from $\mathcal N(0, I)$. On the 512 fixed training
# inputs the loss can end slightly *below* it (in a full run r=1 ends at 0.209 against a floor of 0.219, r=2 at
# 0.0512 against 0.0521): their sample covariance is not exactly $I$, and the low-rank update also fits that
# sample's quirks a little. On 4,096 fresh inputs the loss sits at the floor (0.218 against 0.219 for r=1:
# within the sampling noise of those 4,096 inputs, about 1 %), not below it. (Every rank in this experiment uses
# $\alpha = 2r$, so the same scale $s = 2$: the runs differ in the rank alone. The section on $\alpha$ below
# says why LoRA normally fixes $\alpha$ instead.)

# %%
def train_lora(r, alpha, steps, lr=1e-2, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(D_IN, D_OUT))
    model[0].load_state_dict(pretrained.state_dict())
    apply_lora(model, "0", r=r, alpha=alpha)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    records = []
    for step in range(steps):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x_train), y_train)
        loss.backward()
        opt.step()
        records.append({"step": step, "loss": loss.item()})
    return model, records


ranks = [1, 2, 4, 8]
runs = {r: train_lora(r, alpha=2.0 * r, steps=STEPS) for r in ranks}  # alpha = 2r: the same s = 2 for all
floors = {r: (true_sv[r:] ** 2).sum().item() / D_OUT for r in ranks}
for r in ranks:
    print(f"r={r}: final loss {runs[r][1][-1]['loss']:.2e}   Eckart-Young floor {floors[r]:.2e}")

records = [{**rec, "split": f"r={r}"} for r in ranks for rec in runs[r][1]]
fig = loss_curve(records, keys=("loss",), title="LoRA on a rank-4 task")
fig.axes[0].set_yscale("log")
fig.savefig(output_dir() / "08_lora_rank_loss.png", dpi=110)

x_test = torch.randn(4096, D_IN)
for r in (1, 2):  # the low ranks sit on their floor: a bit below it on the training sample, not on fresh inputs
    model = runs[r][0]
    with torch.no_grad():
        test_loss = nn.functional.mse_loss(model(x_test), pretrained(x_test) + x_test @ delta_true.T).item()
    train_loss = runs[r][1][-1]["loss"]
    print(f"r={r}: training loss {train_loss:.4f}, loss on fresh inputs {test_loss:.4f}, floor {floors[r]:.4f}")
    assert 0.9 * floors[r] < train_loss < floors[r], (r, train_loss, floors[r])       # below it, on 512 samples
    assert 0.97 * floors[r] < test_loss < 1.1 * floors[r], (r, test_loss, floors[r])  # at it (±noise), fresh inputs
for r in (4, 8):
    assert runs[r][1][-1]["loss"] < 0.02 * floors[2], (r, runs[r][1][-1]["loss"])

# %% [markdown]
# In a full run (600 steps) the curves of r=4 and r=8 reach about $10^{-14}$ and then jump back up to about
# $10^{-6}$ before falling again. That is Adam near an exact minimum: its step is
# $\eta\,\hat m/(\sqrt{\hat v}+\epsilon)$, a *normalised* gradient, so when the gradient has shrunk to float32
# rounding noise it still moves each weight by up to about $\eta$ in noise directions, and the loss bounces.
# A learning rate that decays to zero at the end (lesson 16's warmup + cosine) removes the bounce.

# %%
for r in (4, 8):
    losses = [rec["loss"] for rec in runs[r][1]]
    lowest = min(range(len(losses)), key=losses.__getitem__)
    after = max(losses[lowest:])
    print(f"r={r}: lowest loss {losses[lowest]:.1e} at step {lowest}, highest after it {after:.1e}")
    if not FAST:  # the fast run stops at 150 steps, before the minimum is reached
        assert losses[lowest] < 1e-12 and after > 1e4 * losses[lowest], (r, losses[lowest], after)

# %% [markdown]
# The singular values of the learned update $sBA$ tell the same story: rank $r$ recovers the top $r$ singular
# values of $\Delta$ and nothing more.

# %%
fig, ax = plt.subplots(figsize=(5.2, 3.4))
ax.plot(range(1, 9), torch.cat([true_sv, torch.zeros(4)]), "k--o", label="true Delta", lw=1)
for r in ranks:
    sv = torch.linalg.svdvals(runs[r][0][0].delta_weight())[:8]
    ax.plot(range(1, 9), sv, marker=".", label=f"r={r}")
    n = min(r, TRUE_RANK)
    assert torch.allclose(sv[:n], true_sv[:n], rtol=0.1, atol=0.05), (r, sv[:n])
    assert (sv[r:] < 1e-4).all()  # rank(s B A) <= r
    assert (sv[TRUE_RANK:] < 0.05).all()  # a larger rank learns no spurious directions either
ax.set_xlabel("index k")
ax.set_ylabel("singular value")
ax.set_title("singular values of the learned s B A")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(output_dir() / "08_lora_singular_values.png", dpi=110)

# %% [markdown]
# ## What alpha does
#
# With Adam each entry of $A$ and $B$ moves by about the learning rate per step, so the update $sBA$ moves
# about $s$ times as fast: at a fixed learning rate, $\alpha$ acts like a learning-rate multiplier for the
# adapter. That is why LoRA fixes $\alpha$ and lets $s = \alpha/r$ change with the rank (lora.5): $BA$ sums $r$
# products, so dividing by $r$ keeps the update's size, and a learning rate tuned at one rank, roughly the same
# at another (rsLoRA's $\alpha/\sqrt r$ is the refinement, docs/math/lora.md). The rank experiment above did
# the opposite on purpose, $\alpha = 2r$ so $s = 2$ for every rank, to compare ranks at one scale.

# %%
early = {a: train_lora(4, alpha=a, steps=30)[1][-1]["loss"] for a in (1.0, 4.0, 16.0)}
for a, loss in early.items():
    print(f"r=4, alpha={a:>4}: loss after 30 steps {loss:.3f}")
assert early[1.0] > early[4.0] > early[16.0]

# %% [markdown]
# ## Merge for inference
#
# Dropout off, (lora.1) is linear in $x$, so $W' = W_0 + sBA$ (lora.6) computes the same function with a plain
# `nn.Linear`: no extra cost at inference. Only $r(d_{in} + d_{out})$ parameters were trained (lora.7).

# %%
model = runs[4][0].eval()
print(parameter_table({"full fine-tuning": nn.Linear(D_IN, D_OUT), "LoRA r=4": model}))
with torch.no_grad():
    before = model(x_test)
    merged = merge_lora(model)
    assert type(merged[0]) is nn.Linear
    torch.testing.assert_close(merged(x_test), before, rtol=1e-5, atol=1e-5)
print("merged model == LoRA model")

# %% [markdown]
# ## Exercises
#
# 1. Write `lora_linear(x, weight, bias, lora_A, lora_B, alpha)` $= xW^\top + b + (\alpha/r)\,xA^\top B^\top$.
#    Checked by the **lora_linear** adapter (it perturbs $B$, so a zero $B$ cannot hide a bug).
# 2. Rerun the rank experiment with a *fixed* $\alpha = 8$, once with $s = \alpha/r$ and once with rsLoRA's
#    $s = \alpha/\sqrt r$. Which ranks learn faster in the first 30 steps under each rule?
#
# Solutions: `lessons/solutions/08_lora_by_hand.py`.

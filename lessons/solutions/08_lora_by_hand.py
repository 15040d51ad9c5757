# %% [markdown]
# # Solutions to lesson 08's exercises

# %%
import torch
from torch import nn

from minitx.peft.lora import LoRALinear


# %% [markdown]
# **1.** (adapter **lora_linear**)

# %%
def lora_linear(x, weight, bias, lora_A, lora_B, alpha):
    r = lora_A.shape[0]
    return x @ weight.T + (0 if bias is None else bias) + (alpha / r) * (x @ lora_A.T) @ lora_B.T


torch.manual_seed(0)
layer = LoRALinear(nn.Linear(12, 10), r=4, alpha=8.0)
with torch.no_grad():
    layer.lora_B.normal_()  # B = 0 would hide a wrong scale
x = torch.randn(5, 12)
torch.testing.assert_close(lora_linear(x, layer.base.weight, layer.base.bias, layer.lora_A, layer.lora_B, 8.0),
                           layer(x))

# %% [markdown]
# **2.** Measured below (30 Adam steps, fixed $\alpha = 8$): on this task the loss after 30 steps falls with the
# rank under *both* rules, but rsLoRA's $s = \alpha/\sqrt r$ is $\sqrt r$ times larger than $\alpha/r$ and its
# advantage grows with the rank (loss ratio about 1.2 at r=4, 2.3 at r=16, 2.9 at r=64): the $\alpha/r$ rule
# damps large ranks, which is rsLoRA's point (docs/math/lora.md).

# %%
D_IN, D_OUT = 32, 24
pretrained = nn.Linear(D_IN, D_OUT)
U, _ = torch.linalg.qr(torch.randn(D_OUT, 4))
V, _ = torch.linalg.qr(torch.randn(D_IN, 4))
delta = U @ torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.5])) @ V.T
xs = torch.randn(512, D_IN)
with torch.no_grad():
    ys = pretrained(xs) + xs @ delta.T


def loss_after(r, scale, steps=30):
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(D_IN, D_OUT), r=r, alpha=scale * r)  # alpha chosen so that s = scale
    layer.base.load_state_dict(pretrained.state_dict())
    opt = torch.optim.Adam([layer.lora_A, layer.lora_B], lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.mse_loss(layer(xs), ys)
        loss.backward()
        opt.step()
    return loss.item()


lora = {r: loss_after(r, 8.0 / r) for r in (4, 16, 64)}
rslora = {r: loss_after(r, 8.0 / r ** 0.5) for r in (4, 16, 64)}
print("alpha/r:", {r: round(v, 3) for r, v in lora.items()}, " alpha/sqrt(r):", {r: round(v, 3) for r, v in rslora.items()})
gain = {r: lora[r] / rslora[r] for r in lora}
assert all(rslora[r] < lora[r] for r in (16, 64)) and gain[4] < gain[16] < gain[64], gain

# %% [markdown]
# # Solutions to lesson 11's exercises

# %%
import torch

from minitx.generation.sampling import sample_next
from minitx.models.gpt import GPT, GPTConfig, next_token_loss


# %% [markdown]
# **1.** (adapter **causal_lm_loss**): position $i$ predicts token $i+1$, so drop the last logits and the first ids.

# %%
def causal_lm_loss(logits, ids):
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


logits, ids = torch.randn(2, 9, 11), torch.randint(0, 11, (2, 9))
torch.testing.assert_close(causal_lm_loss(logits, ids), next_token_loss(logits[:, :-1], ids[:, 1:]))

# %% [markdown]
# **2.** `sample_next` divides by the temperature *first*, then picks the nucleus of the tempered distribution.
# A low temperature concentrates the mass, so fewer tokens reach top_p: the order changes the kept set.

# %%
z = torch.tensor([2.0, 1.5, 1.0, 0.0, -1.0])


def nucleus(p, top_p):
    sorted_p, order = p.sort(descending=True)
    return set(order[(sorted_p.cumsum(0) - sorted_p) < top_p].tolist())


tempered_first = nucleus(torch.softmax(z / 0.3, 0), 0.9)
nucleus_first = nucleus(torch.softmax(z, 0), 0.9)
g = torch.Generator().manual_seed(0)
drawn = set(sample_next(z[None].expand(3000, 5), temperature=0.3, top_p=0.9, generator=g).tolist())
print(f"temperature then top-p keeps {sorted(tempered_first)}, top-p then temperature {sorted(nucleus_first)}; "
      f"sample_next drew {sorted(drawn)}")
assert tempered_first != nucleus_first and drawn <= tempered_first

# %% [markdown]
# **3.** One token at a time, keeping each layer's keys and values, gives the same last logits as the full
# forward (lesson 12 builds this cache into minitx). A compact version for the same weights layout:

# %%
torch.manual_seed(0)
model = GPT(GPTConfig(vocab_size=13, max_position=16, d_model=16, n_layers=2, n_heads=2)).eval()
W, H = model.state_dict(), 2


def ln(x, name):
    return torch.nn.functional.layer_norm(x, x.shape[-1:], W[f"{name}.weight"], W[f"{name}.bias"])


def lin(x, name):
    return x @ W[f"{name}.weight"].T + W[f"{name}.bias"]


def step(token, position, cache):
    h = W["token.weight"][token] + W["position.weight"][position]  # (C,)
    for layer in range(2):
        p = f"blocks.{layer}"
        x = ln(h, f"{p}.attention_norm")
        q, k, v = (lin(x, f"{p}.attention.{n}_proj").view(H, -1) for n in "qkv")  # (H, D)
        cache.setdefault(layer, ([], []))
        cache[layer][0].append(k)
        cache[layer][1].append(v)
        K, V = torch.stack(cache[layer][0], 1), torch.stack(cache[layer][1], 1)  # (H, M, D)
        w = torch.softmax((K @ q[:, :, None]).squeeze(-1) / q.shape[-1] ** 0.5, -1)  # (H, M): the past only
        h = h + lin((w[:, None] @ V).reshape(-1), f"{p}.attention.out_proj")
        x = ln(h, f"{p}.ffn_norm")
        h = h + lin(torch.nn.functional.gelu(lin(x, f"{p}.feed_forward.fc_in")), f"{p}.feed_forward.fc_out")
    return ln(h, "final_norm") @ W["token.weight"].T


tokens = torch.randint(0, 13, (10,))
cache = {}
with torch.no_grad():
    for i, t in enumerate(tokens):
        last = step(t, i, cache)
    torch.testing.assert_close(last, model(tokens[None]).logits[0, -1], rtol=1e-4, atol=1e-5)
print("token by token with a cache == the full forward")

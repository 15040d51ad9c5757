"""A learner's adapters written with plain PyTorch ops, independently of minitx: the kit must pass all of them.

Also the base every mutant in mutants.py changes in one place.
"""

import math

import torch
import torch.nn.functional as F


def softmax(x, dim=-1):
    e = torch.exp(x - x.amax(dim=dim, keepdim=True))
    return e / e.sum(dim=dim, keepdim=True)


def layer_norm(x, weight, bias, eps=1e-5):
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    mean = xf.mean(-1, keepdim=True)
    var = ((xf - mean) ** 2).mean(-1, keepdim=True)
    return ((xf - mean) / torch.sqrt(var + eps) * weight + bias).to(x.dtype)


def rms_norm(x, weight, eps=1e-6):
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    return (xf / torch.sqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight).to(x.dtype)


def gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def silu(x):
    return x * torch.sigmoid(x)


def swiglu(x, w_gate, w_up, w_down):
    return (silu(x @ w_gate.T) * (x @ w_up.T)) @ w_down.T


def cross_entropy(logits, targets, ignore_index=-100):
    keep = targets != ignore_index
    log_probs = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    picked = log_probs.gather(1, targets.clamp(min=0)[:, None]).squeeze(1)
    return -(picked * keep).sum() / keep.sum()


def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False, scale=None):
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    n, m = q.shape[-2], k.shape[-2]
    allowed = torch.ones(n, m, dtype=torch.bool, device=q.device)
    if is_causal:
        allowed = allowed.tril()
    if attn_mask is not None:
        allowed = allowed & attn_mask
    scores = (q.float() @ k.float().transpose(-2, -1)) * scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    any_key = allowed.any(-1, keepdim=True)
    scores = scores.masked_fill(~any_key, 0.0)  # a row with no key: finite scores, zeroed below
    probs = torch.softmax(scores, dim=-1) * any_key
    return (probs @ v.float()).to(q.dtype)


def multi_head_attention(x, q_weight, k_weight, v_weight, o_weight, n_heads, attention_mask=None, is_causal=False):
    b, n, c = x.shape

    def heads(t):
        return t.reshape(b, n, n_heads, c // n_heads).transpose(1, 2)

    q, k, v = heads(x @ q_weight.T), heads(x @ k_weight.T), heads(x @ v_weight.T)
    mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
    out = scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
    return out.transpose(1, 2).reshape(b, n, c) @ o_weight.T


def rope(x, positions, theta=10000.0):
    d = x.shape[-1]
    inv_freq = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angles = positions.double()[:, None] * inv_freq[None, :]
    cos, sin = torch.cat([angles.cos()] * 2, -1).to(x.dtype), torch.cat([angles.sin()] * 2, -1).to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def sinusoidal_positions(n_positions, d_model):
    pe = torch.zeros(n_positions, d_model)
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]
    div = 10000.0 ** (torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    pe[:, 0::2] = torch.sin(pos / div).float()
    pe[:, 1::2] = torch.cos(pos / div).float()[:, : d_model // 2]
    return pe


def lora_linear(x, weight, bias, lora_A, lora_B, alpha):
    return x @ weight.T + bias + (alpha / lora_A.shape[0]) * (x @ lora_A.T) @ lora_B.T


class AdamW:
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        self.param_groups = [dict(params=list(params), lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)]
        self.state = {}

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                s = self.state.setdefault(p, {"t": 0, "m": torch.zeros_like(p), "v": torch.zeros_like(p)})
                s["t"] += 1
                p.mul_(1 - group["lr"] * group["weight_decay"])
                s["m"].mul_(b1).add_(p.grad, alpha=1 - b1)
                s["v"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                m_hat = s["m"] / (1 - b1 ** s["t"])
                v_hat = s["v"] / (1 - b2 ** s["t"])
                p.sub_(group["lr"] * m_hat / (v_hat.sqrt() + group["eps"]))

    def zero_grad(self):
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None


def get_adamw_cls():
    return AdamW


def lr_cosine_schedule(step, max_lr, min_lr, warmup_steps, total_steps):
    if step < warmup_steps:
        return max_lr * step / warmup_steps
    if step > total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (max_lr - min_lr)


def clip_gradients(params, max_norm):
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
    if norm > max_norm:
        for g in grads:
            g.mul_(max_norm / (norm + 1e-6))


def mask_tokens(ids, vocab_size, mask_id, special_ids, p=0.15, generator=None):
    special = torch.isin(ids, torch.tensor(list(special_ids)))
    selected = (torch.rand(ids.shape, generator=generator) < p) & ~special
    roll = torch.rand(ids.shape, generator=generator)
    random_ids = torch.randint(0, vocab_size, ids.shape, generator=generator)
    inputs = ids.clone()
    inputs[selected & (roll < 0.8)] = mask_id
    swap = selected & (roll >= 0.8) & (roll < 0.9)
    inputs[swap] = random_ids[swap]
    return inputs, torch.where(selected, ids, torch.full_like(ids, -100))


def causal_lm_loss(logits, ids):
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


class Block(torch.nn.Module):
    def __init__(self, c, n_heads):
        super().__init__()
        self.n_heads = n_heads
        self.ln_1, self.ln_2 = torch.nn.LayerNorm(c), torch.nn.LayerNorm(c)
        self.q, self.k, self.v, self.o = (torch.nn.Linear(c, c) for _ in range(4))
        self.fc, self.proj = torch.nn.Linear(c, 4 * c), torch.nn.Linear(4 * c, c)

    def attend(self, x):
        b, n, c = x.shape

        def heads(t):
            return t.reshape(b, n, self.n_heads, c // self.n_heads).transpose(1, 2)

        out = scaled_dot_product_attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)), is_causal=True)
        return self.o(out.transpose(1, 2).reshape(b, n, c))

    def forward(self, x):
        x = x + self.attend(self.ln_1(x))
        return x + self.proj(gelu(self.fc(self.ln_2(x))))


class TinyGPT(torch.nn.Module):
    """GPT-2's layout with its own names (wte, wpe, h.i.ln_1, ...), not minitx's: the name map bridges them."""

    def __init__(self, vocab_size, max_position, d_model, n_layers, n_heads):
        super().__init__()
        self.wte, self.wpe = torch.nn.Embedding(vocab_size, d_model), torch.nn.Embedding(max_position, d_model)
        self.h = torch.nn.ModuleList(Block(d_model, n_heads) for _ in range(n_layers))
        self.ln_f = torch.nn.LayerNorm(d_model)

    def forward(self, ids):
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1]))
        for block in self.h:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.T


GPT_NAMES = {"wte.weight": "token.weight", "wpe.weight": "position.weight", "ln_f.weight": "final_norm.weight",
             "ln_f.bias": "final_norm.bias"}
BLOCK_NAMES = {"ln_1": "attention_norm", "ln_2": "ffn_norm", "q": "attention.q_proj", "k": "attention.k_proj",
               "v": "attention.v_proj", "o": "attention.out_proj", "fc": "feed_forward.fc_in",
               "proj": "feed_forward.fc_out"}


def gpt_name_map(model):
    names = dict(GPT_NAMES)
    for i in range(len(model.h)):
        for mine, theirs in BLOCK_NAMES.items():
            for kind in ("weight", "bias"):
                names[f"h.{i}.{mine}.{kind}"] = f"blocks.{i}.{theirs}.{kind}"
    return names


def build_gpt(vocab_size, max_position, d_model, n_layers, n_heads):
    model = TinyGPT(vocab_size, max_position, d_model, n_layers, n_heads)
    return model, gpt_name_map(model)

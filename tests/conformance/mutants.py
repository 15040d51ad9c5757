"""Realistic learner bugs, one per mutant, each a copy of a plain-PyTorch adapter with one thing wrong.

MUTANTS: (adapter name, what is wrong, the function). tests/test_conformance.py runs each against its own
adapter only and requires a FAIL there: the kit's kill rate is killed / len(MUTANTS).
"""

import math

import torch
import torch.nn.functional as F

from conformance import plain_torch as P

MUTANTS = []


def mutant(adapter, what):
    def register(fn):
        MUTANTS.append((adapter, what, fn))
        return fn
    return register


# ---------------------------------------------------------------------------------------------- softmax
@mutant("softmax", "no max subtraction: exp overflows")
def _(x, dim=-1):
    e = torch.exp(x)
    return e / e.sum(dim=dim, keepdim=True)


@mutant("softmax", "ignores dim, always the last axis")
def _(x, dim=-1):
    return P.softmax(x, -1)


@mutant("softmax", "normalises over every element, not one dim")
def _(x, dim=-1):
    e = torch.exp(x - x.amax(dim=dim, keepdim=True))
    return e / e.sum()


@mutant("softmax", "sum without keepdim (broadcasts along the wrong axis)")
def _(x, dim=-1):
    e = torch.exp(x - x.amax(dim=dim, keepdim=True))
    return e / e.sum(dim=dim)


# ------------------------------------------------------------------------------------------- layer norm
def _ln(x, weight, bias, eps, unbiased=False, eps_out=False, dim=-1, detach_var=False):
    mean = x.mean(dim, keepdim=True)
    var = x.var(dim, keepdim=True, unbiased=unbiased)
    if detach_var:
        var = var.detach()
    std = torch.sqrt(var) + eps if eps_out else torch.sqrt(var + eps)
    return (x - mean) / std * weight + bias


mutant("layer_norm", "unbiased variance (divides by C - 1)")(
    lambda x, weight, bias, eps=1e-5: _ln(x, weight, bias, eps, unbiased=True))
mutant("layer_norm", "eps outside the square root")(
    lambda x, weight, bias, eps=1e-5: _ln(x, weight, bias, eps, eps_out=True))
mutant("layer_norm", "ignores the eps argument")(lambda x, weight, bias, eps=1e-5: _ln(x, weight, bias, 1e-5))
mutant("layer_norm", "forgets the bias")(lambda x, weight, bias, eps=1e-5: _ln(x, weight, bias * 0, eps))
mutant("layer_norm", "normalises over the first dim")(lambda x, weight, bias, eps=1e-5: _ln(x, weight, bias, eps, dim=0))
mutant("layer_norm", "detaches the variance (values right, gradients wrong)")(
    lambda x, weight, bias, eps=1e-5: _ln(x, weight, bias, eps, detach_var=True))


@mutant("layer_norm", "variance as mean(x^2), without subtracting the mean")
def _(x, weight, bias, eps=1e-5):
    return (x - x.mean(-1, keepdim=True)) / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight + bias


# ---------------------------------------------------------------------------------------------- RMSNorm
mutant("rms_norm", "subtracts the mean (that is LayerNorm)")(
    lambda x, weight, eps=1e-6: P.rms_norm(x - x.mean(-1, keepdim=True), weight, eps))
mutant("rms_norm", "eps outside the square root")(
    lambda x, weight, eps=1e-6: x / (torch.sqrt(x.pow(2).mean(-1, keepdim=True)) + eps) * weight)
mutant("rms_norm", "sum of squares instead of the mean")(
    lambda x, weight, eps=1e-6: x / torch.sqrt(x.pow(2).sum(-1, keepdim=True) + eps) * weight)

# ---------------------------------------------------------------------------------------- activations
mutant("gelu", "the tanh approximation")(lambda x: F.gelu(x, approximate="tanh"))
mutant("gelu", "the sigmoid approximation x sigmoid(1.702 x)")(lambda x: x * torch.sigmoid(1.702 * x))
mutant("gelu", "erf(x) without the 1/sqrt(2)")(lambda x: 0.5 * x * (1 + torch.erf(x)))
mutant("silu", "sigmoid(x), the x forgotten")(lambda x: torch.sigmoid(x))
mutant("silu", "x sigmoid(-x), the sign flipped")(lambda x: x * torch.sigmoid(-x))
mutant("swiglu", "SiLU on the up projection, not the gate")(
    lambda x, w_gate, w_up, w_down: ((x @ w_gate.T) * P.silu(x @ w_up.T)) @ w_down.T)
mutant("swiglu", "GELU instead of SiLU")(
    lambda x, w_gate, w_up, w_down: (F.gelu(x @ w_gate.T) * (x @ w_up.T)) @ w_down.T)
mutant("swiglu", "w_down not transposed")(
    lambda x, w_gate, w_up, w_down: (P.silu(x @ w_gate.T) * (x @ w_up.T)) @ w_down.reshape(w_down.shape[1], -1))


# --------------------------------------------------------------------------------------------- losses
@mutant("cross_entropy", "mean over every row, ignored ones included")
def _(logits, targets, ignore_index=-100):
    keep = targets != ignore_index
    log_probs = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    return -(log_probs.gather(1, targets.clamp(min=0)[:, None]).squeeze(1) * keep).mean()


mutant("cross_entropy", "sum instead of mean")(
    lambda logits, targets, ignore_index=-100: P.cross_entropy(logits, targets, ignore_index) * (targets != ignore_index).sum())


@mutant("cross_entropy", "log(softmax) without the max: overflows")
def _(logits, targets, ignore_index=-100):
    keep = targets != ignore_index
    probs = torch.exp(logits) / torch.exp(logits).sum(-1, keepdim=True)
    return -(torch.log(probs.gather(1, targets.clamp(min=0)[:, None]).squeeze(1)) * keep).sum() / keep.sum()


mutant("cross_entropy", "ignore_index hard-coded to -100")(
    lambda logits, targets, ignore_index=-100: P.cross_entropy(logits, targets, -100))

mutant("causal_lm_loss", "no shift: position t predicts token t")(
    lambda logits, ids: F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids.reshape(-1)))
mutant("causal_lm_loss", "shifted the wrong way")(
    lambda logits, ids: F.cross_entropy(logits[:, 1:].reshape(-1, logits.shape[-1]), ids[:, :-1].reshape(-1)))
mutant("causal_lm_loss", "sum instead of mean")(
    lambda logits, ids: P.causal_lm_loss(logits, ids) * ids[:, 1:].numel())


# ------------------------------------------------------------------------------------------------ SDPA
def _sdpa(q, k, v, attn_mask=None, is_causal=False, scale=None, *, scale_rule="sqrt", axis=-1, invert=False,
          after=False, nan_rows=False, diagonal=0, bottom_right=False, fill=float("-inf")):
    d, n, m = q.shape[-1], q.shape[-2], k.shape[-2]
    if scale is None or scale_rule == "ignore":
        scale = {"sqrt": 1 / math.sqrt(d), "none": 1.0, "d": 1 / d, "ignore": 1 / math.sqrt(d)}[scale_rule]
    allowed = torch.ones(n, m, dtype=torch.bool)
    if is_causal:
        allowed = allowed.tril(diagonal + (m - n if bottom_right else 0))
    if attn_mask is not None:
        allowed = allowed & (~attn_mask if invert else attn_mask)
    scores = (q @ k.transpose(-2, -1)) * scale
    if after:
        return (torch.softmax(scores, dim=-1) * allowed) @ v
    scores = scores.masked_fill(~allowed, fill)
    if nan_rows or fill != float("-inf"):
        return torch.softmax(scores, dim=axis) @ v
    any_key = allowed.any(-1, keepdim=True)
    probs = torch.softmax(scores.masked_fill(~any_key, 0.0), dim=axis) * any_key
    return probs @ v


for what, options in (("no 1/sqrt(D) scaling", dict(scale_rule="none")), ("scaled by 1/D", dict(scale_rule="d")),
                      ("the scale argument ignored", dict(scale_rule="ignore")),
                      ("softmax over the queries (wrong axis)", dict(axis=-2)),
                      ("mask inverted (True = masked out)", dict(invert=True)),
                      ("mask applied after the softmax", dict(after=True)),
                      ("NaN on a fully masked row", dict(nan_rows=True)),
                      ("masked with -1e9: a fully masked row averages v instead of giving 0", dict(fill=-1e9)),
                      ("causal mask off by one (diagonal excluded)", dict(diagonal=-1)),
                      ("causal mask off by one (one future key seen)", dict(diagonal=1)),
                      ("causal mask bottom-right aligned", dict(bottom_right=True))):
    mutant("scaled_dot_product_attention", what)(
        lambda q, k, v, attn_mask=None, is_causal=False, scale=None, _o=options: _sdpa(q, k, v, attn_mask, is_causal,
                                                                                      scale, **_o))


# ------------------------------------------------------------------------------------------------- MHA
def _mha(x, wq, wk, wv, wo, h, attention_mask=None, is_causal=False, *, split="ok", merge="ok", invert=False,
         transpose_w=True, head_scale=True, ignore_mask=False):
    b, n, c = x.shape
    proj = (lambda t, w: t @ w.T) if transpose_w else (lambda t, w: t @ w)

    def heads(t):
        return t.reshape(b, h, n, c // h) if split == "view" else t.reshape(b, n, h, c // h).transpose(1, 2)

    q, k, v = heads(proj(x, wq)), heads(proj(x, wk)), heads(proj(x, wv))
    mask = None
    if attention_mask is not None and not ignore_mask:
        keep = attention_mask.bool()
        mask = (~keep if invert else keep)[:, None, None, :]
    out = P.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                         scale=None if head_scale else 1 / math.sqrt(c))
    out = out.reshape(b, n, c) if merge == "view" else out.transpose(1, 2).reshape(b, n, c)
    return proj(out, wo)


for what, options in (("heads split by a bare reshape to (B, H, N, D)", dict(split="view")),
                      ("heads merged by a bare reshape of (B, H, N, D)", dict(merge="view")),
                      ("attention_mask inverted (1 = padding)", dict(invert=True)),
                      ("attention_mask ignored", dict(ignore_mask=True)),
                      ("weights not transposed (x @ W)", dict(transpose_w=False)),
                      ("scores scaled by 1/sqrt(C), not 1/sqrt(D) of a head", dict(head_scale=False))):
    mutant("multi_head_attention", what)(
        lambda x, q_weight, k_weight, v_weight, o_weight, n_heads, attention_mask=None, is_causal=False, _o=options:
        _mha(x, q_weight, k_weight, v_weight, o_weight, n_heads, attention_mask, is_causal, **_o))


# ------------------------------------------------------------------------------------------------ RoPE
def _rope(x, positions, theta=10000.0, *, pairing="half", sign=1, freq="2i", ignore_positions=False,
          ignore_theta=False):
    d = x.shape[-1]
    theta = 10000.0 if ignore_theta else theta
    i = torch.arange(0, d, 2, dtype=torch.float64) if freq == "2i" else torch.arange(d // 2, dtype=torch.float64)
    pos = torch.arange(x.shape[-2]) if ignore_positions else positions
    angles = sign * pos.double()[:, None] * theta ** (-i / d)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    if pairing == "interleaved":
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), -1).flatten(-2)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), -1)


for what, options in (("interleaved pairing (2i, 2i+1)", dict(pairing="interleaved")),
                      ("rotates the wrong way", dict(sign=-1)),
                      ("frequencies theta^(-i/D), not theta^(-2i/D)", dict(freq="i")),
                      ("positions ignored (0..N-1)", dict(ignore_positions=True)),
                      ("theta ignored", dict(ignore_theta=True))):
    mutant("rope", what)(lambda x, positions, theta=10000.0, _o=options: _rope(x, positions, theta, **_o))


# ---------------------------------------------------------------------------------- sinusoidal positions
@mutant("sinusoidal_positions", "sin and cos swapped")
def _(n_positions, d_model):
    pe = P.sinusoidal_positions(n_positions, d_model + d_model % 2)
    out = torch.empty_like(pe)
    out[:, 0::2], out[:, 1::2] = pe[:, 1::2], pe[:, 0::2]
    return out[:, :d_model]


@mutant("sinusoidal_positions", "sines and cosines concatenated in halves")
def _(n_positions, d_model):
    pe = P.sinusoidal_positions(n_positions, d_model)
    return torch.cat((pe[:, 0::2], pe[:, 1::2]), 1)


@mutant("sinusoidal_positions", "each column its own frequency 10000^(j/d)")
def _(n_positions, d_model):
    angle = torch.arange(n_positions)[:, None] / 10000.0 ** (torch.arange(d_model) / d_model)
    return torch.where(torch.arange(d_model) % 2 == 0, angle.sin(), angle.cos()).float()


# ------------------------------------------------------------------------------------------------ LoRA
mutant("lora_linear", "scaled by alpha, not alpha / r")(
    lambda x, weight, bias, lora_A, lora_B, alpha: x @ weight.T + bias + alpha * (x @ lora_A.T) @ lora_B.T)
mutant("lora_linear", "scaled by alpha / sqrt(r)")(
    lambda x, weight, bias, lora_A, lora_B, alpha:
    x @ weight.T + bias + alpha / math.sqrt(lora_A.shape[0]) * (x @ lora_A.T) @ lora_B.T)
mutant("lora_linear", "the base bias forgotten")(
    lambda x, weight, bias, lora_A, lora_B, alpha: P.lora_linear(x, weight, bias * 0, lora_A, lora_B, alpha))
mutant("lora_linear", "r read from lora_B's rows (its out dim)")(
    lambda x, weight, bias, lora_A, lora_B, alpha:
    x @ weight.T + bias + alpha / lora_B.shape[0] * (x @ lora_A.T) @ lora_B.T)


# ----------------------------------------------------------------------------------------------- AdamW
class _AdamW(P.AdamW):
    l2 = bias_correction = eps_inside = cache_lr = decay_without_lr = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(params, lr, betas, eps, weight_decay)
        self.lr0 = lr

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            (b1, b2), lr, wd = group["betas"], (self.lr0 if self.cache_lr else group["lr"]), group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad + wd * p if self.l2 else p.grad
                s = self.state.setdefault(p, {"t": 0, "m": torch.zeros_like(p), "v": torch.zeros_like(p)})
                s["t"] += 1
                if not self.l2:
                    p.mul_(1 - (wd if self.decay_without_lr else lr * wd))
                s["m"].mul_(b1).add_(g, alpha=1 - b1)
                s["v"].mul_(b2).addcmul_(g, g, value=1 - b2)
                c1, c2 = (1 - b1 ** s["t"], 1 - b2 ** s["t"]) if not self.bias_correction else (1.0, 1.0)
                denom = (s["v"] / c2 + group["eps"]).sqrt() if self.eps_inside else (s["v"] / c2).sqrt() + group["eps"]
                p.sub_(lr * (s["m"] / c1) / denom)


for what, flag in (("L2 in the gradient instead of decoupled decay", "l2"),
                   ("no bias correction", "bias_correction"), ("eps inside the square root", "eps_inside"),
                   ("lr cached at construction (a schedule cannot change it)", "cache_lr"),
                   ("decay not multiplied by lr", "decay_without_lr")):
    cls = type(f"AdamW_{flag}", (_AdamW,), {flag: True})
    mutant("adamw", what)(lambda _c=cls: _c)


# ------------------------------------------------------------------------------------------- schedule
@mutant("cosine_schedule", "warmup off by one: (t + 1) / warmup")
def _(step, max_lr, min_lr, warmup_steps, total_steps):
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    return P.lr_cosine_schedule(step, max_lr, min_lr, warmup_steps, total_steps)


mutant("cosine_schedule", "decays to 0, not to min_lr")(
    lambda step, max_lr, min_lr, warmup_steps, total_steps:
    P.lr_cosine_schedule(step, max_lr, 0.0, warmup_steps, total_steps))


@mutant("cosine_schedule", "keeps following the cosine after total_steps")
def _(step, max_lr, min_lr, warmup_steps, total_steps):
    if step < warmup_steps:
        return max_lr * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (max_lr - min_lr)


@mutant("cosine_schedule", "cosine progress over total_steps, not total - warmup")
def _(step, max_lr, min_lr, warmup_steps, total_steps):
    if step < warmup_steps:
        return max_lr * step / warmup_steps
    if step > total_steps:
        return min_lr
    return min_lr + 0.5 * (1 + math.cos(math.pi * step / total_steps)) * (max_lr - min_lr)


# ------------------------------------------------------------------------------------------- clipping
@mutant("gradient_clipping", "each tensor clipped by its own norm")
def _(params, max_norm):
    for p in params:
        if p.grad is not None:
            P.clip_gradients([p], max_norm)


@mutant("gradient_clipping", "clipped by value, not by norm")
def _(params, max_norm):
    for p in params:
        if p.grad is not None:
            p.grad.clamp_(-max_norm, max_norm)


@mutant("gradient_clipping", "always rescaled to max_norm, even when the norm is smaller")
def _(params, max_norm):
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    for g in grads:
        g.mul_(max_norm / (norm + 1e-6))


@mutant("gradient_clipping", "the squared norm (no square root)")
def _(params, max_norm):
    grads = [p.grad for p in params if p.grad is not None]
    norm = sum((g ** 2).sum() for g in grads)
    if norm > max_norm:
        for g in grads:
            g.mul_(max_norm / (norm + 1e-6))


# ---------------------------------------------------------------------------------------- MLM masking
def _mask(ids, vocab_size, mask_id, special_ids, p=0.15, generator=None, *, specials_ok=False, shares=(0.8, 0.9),
          fixed_p=False, labels_everywhere=False, labels_corrupted=False, global_rng=False):
    g = None if global_rng else generator
    special = torch.zeros_like(ids, dtype=torch.bool) if specials_ok else torch.isin(ids, torch.tensor(special_ids))
    selected = (torch.rand(ids.shape, generator=g) < (0.15 if fixed_p else p)) & ~special
    roll = torch.rand(ids.shape, generator=g)
    random_ids = torch.randint(0, vocab_size, ids.shape, generator=g)
    inputs = ids.clone()
    inputs[selected & (roll < shares[0])] = mask_id
    swap = selected & (roll >= shares[0]) & (roll < shares[1])
    inputs[swap] = random_ids[swap]
    if labels_everywhere:
        return inputs, ids.clone()
    return inputs, torch.where(selected, inputs if labels_corrupted else ids, torch.full_like(ids, -100))


for what, options in (("special tokens can be selected", dict(specials_ok=True)),
                      ("every selected token becomes [MASK] (no 80/10/10)", dict(shares=(1.0, 1.0))),
                      ("80/20/0: the 10% kept unchanged are replaced too", dict(shares=(0.8, 1.0))),
                      ("p ignored, always 0.15", dict(fixed_p=True)),
                      ("labels on every position, not -100 elsewhere", dict(labels_everywhere=True)),
                      ("labels hold the corrupted input, not the original", dict(labels_corrupted=True)),
                      ("the generator ignored (global RNG)", dict(global_rng=True))):
    mutant("mlm_masking", what)(
        lambda ids, vocab_size, mask_id, special_ids, p=0.15, generator=None, _o=options:
        _mask(ids, vocab_size, mask_id, special_ids, p, generator, **_o))


# ------------------------------------------------------------------------------------- the whole GPT
class _Block(P.Block):
    post_ln = no_causal = tanh_gelu = False

    def attend(self, x):
        b, n, c = x.shape

        def heads(t):
            return t.reshape(b, n, self.n_heads, c // self.n_heads).transpose(1, 2)

        out = P.scaled_dot_product_attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)),
                                             is_causal=not self.no_causal)
        return self.o(out.transpose(1, 2).reshape(b, n, c))

    def forward(self, x):
        act = (lambda t: F.gelu(t, approximate="tanh")) if self.tanh_gelu else P.gelu
        if self.post_ln:
            x = self.ln_1(x + self.attend(x))
            return self.ln_2(x + self.proj(act(self.fc(x))))
        x = x + self.attend(self.ln_1(x))
        return x + self.proj(act(self.fc(self.ln_2(x))))


class _GPT(P.TinyGPT):
    no_final_norm = no_positions = False

    def forward(self, ids):
        x = self.wte(ids) + (0 if self.no_positions else self.wpe(torch.arange(ids.shape[1])))
        for block in self.h:
            x = block(x)
        return (x if self.no_final_norm else self.ln_f(x)) @ self.wte.weight.T


def _gpt_builder(block_flags, model_flags):
    def build_gpt(vocab_size, max_position, d_model, n_layers, n_heads):
        model = type("G", (_GPT,), model_flags)(vocab_size, max_position, d_model, n_layers, n_heads)
        model.h = torch.nn.ModuleList(type("B", (_Block,), block_flags)(d_model, n_heads) for _ in range(n_layers))
        return model, P.gpt_name_map(model)
    return build_gpt


for what, block_flags, model_flags in (("post-LN blocks instead of pre-LN", {"post_ln": True}, {}),
                                       ("self-attention not causal", {"no_causal": True}, {}),
                                       ("the tanh GELU in the MLP", {"tanh_gelu": True}, {}),
                                       ("the final LayerNorm forgotten", {}, {"no_final_norm": True}),
                                       ("position embeddings not added", {}, {"no_positions": True})):
    mutant("gpt", what)(_gpt_builder(block_flags, model_flags))

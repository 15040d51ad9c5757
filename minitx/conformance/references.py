"""The reference each adapter is checked against: minitx's own function wherever minitx has one.

Each reference takes the learner's argument order (the adapter contract) and returns what the contract promises,
so a check can call it at float64 (the truth) and at the learner's precision (the error PyTorch-grade code
makes there). Gradients come from minitx's hand-written backwards (`torch.autograd.Function`s).

RMSNorm, SiLU and SwiGLU are minitx.functional's, with their hand-written backwards (rmsnorm.1-5, silu.1-2,
swiglu.1-3 in docs/math).
"""

from __future__ import annotations

import warnings

import torch
from einops import rearrange

import minitx.functional as mF
from minitx.attention.front_door import attention
from minitx.peft.lora import LoRAFunction
from minitx.positional.absolute import sinusoidal_table
from minitx.data.mlm import mask_tokens as minitx_mask_tokens
from minitx.models.gpt import GPT, GPTConfig
from minitx.positional.rope import RotaryEmbedding
from minitx.training.config import TrainConfig
from minitx.training.optim import AdamW, lr_at


def softmax(x, dim=-1):
    return mF.softmax(x, dim=dim)


def layer_norm(x, weight, bias, eps=1e-5):
    return mF.layer_norm(x, weight, bias, eps=eps)


def rms_norm(x, weight, eps=1e-6):
    return mF.rms_norm(x, weight, eps=eps)


def gelu(x):
    return mF.gelu(x)


def silu(x):
    return mF.silu(x)


def swiglu(x, w_gate, w_up, w_down):
    """(silu(x w_gate^T) * (x w_up^T)) w_down^T."""
    hidden = mF.swiglu(x @ w_gate.T, x @ w_up.T)  # (..., C) -> (..., F)
    return hidden @ w_down.T                                          # (..., F) -> (..., C)


def cross_entropy(logits, targets, ignore_index=-100):
    return mF.cross_entropy(logits, targets, ignore_index=ignore_index)


def causal_lm_loss(logits, ids):
    """(dec.4): position t predicts token t + 1; the last position has no target."""
    v = logits.shape[-1]
    return mF.cross_entropy(logits[:, :-1].reshape(-1, v), ids[:, 1:].reshape(-1))  # (B, N-1, V) -> (R, V)


def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False, scale=None):
    return mF.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale)


def multi_head_attention(x, q_weight, k_weight, v_weight, o_weight, n_heads, attention_mask=None, is_causal=False):
    """(mha.1)-(mha.3) through minitx's attention front door (backend "math")."""
    q, k, v = (rearrange(x @ w.T, "b n (h d) -> b h n d", h=n_heads)  # (B, N, C) -> (B, H, N, D)
               for w in (q_weight, k_weight, v_weight))
    padding = None if attention_mask is None else attention_mask.bool()
    out = attention(q, k, v, backend="math", key_padding_mask=padding, is_causal=is_causal)
    return rearrange(out, "b h n d -> b n (h d)") @ o_weight.T  # (B, H, N, D) -> (B, N, C)


def rope(x, positions, theta=10000.0):
    """(pos.3)-(pos.5), rotate-half pairing: dimension i with i + D/2."""
    return RotaryEmbedding(x.shape[-1], base=theta).rotate(x, positions)


def rope_interleaved(x, positions, theta=10000.0):
    """The other pairing, (2i, 2i + 1) (GPT-J, Meta's original Llama): only to tell a learner which one they wrote."""
    pairs = rearrange(x, "... (d two) -> ... two d", two=2)   # (..., D) -> (..., 2, D/2): evens, odds
    out = rope(rearrange(pairs, "... two d -> ... (two d)"), positions, theta)   # -> (..., D) split halves
    return rearrange(out, "... (two d) -> ... (d two)", two=2)  # (..., D) back to the interleaved order


def sinusoidal_positions(n_positions, d_model):
    return sinusoidal_table(n_positions, d_model)


def lora_linear(x, weight, bias, lora_A, lora_B, alpha):
    """(lora.1) with s = alpha / r (lora.5), through minitx's hand-written backward (lora.2)-(lora.4)."""
    return LoRAFunction.apply(x, weight, bias, lora_A, lora_B, alpha / lora_A.shape[0], None)


def get_adamw_cls():
    return AdamW


def lr_cosine_schedule(step, max_lr, min_lr, warmup_steps, total_steps):
    """(opt.5) then (opt.7): minitx's `lr_at` with the cosine schedule ending at min_lr."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a short warmup warns; here it is what the case asks for
        config = TrainConfig(lr=max_lr, warmup_steps=warmup_steps, max_steps=total_steps, schedule="cosine",
                             min_lr_ratio=min_lr / max_lr, out_dir="", progress=False, device="cpu")
    return lr_at(step, config)


def clip_gradients(params, max_norm):
    """(opt.8): PyTorch's clip_grad_norm_, the call minitx's training loop makes."""
    return torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], max_norm)


def mask_tokens(ids, vocab_size, mask_id, special_ids, p=0.15, generator=None):
    """(mlm.2)-(mlm.3) by minitx.data.mlm.mask_tokens, in the adapter's argument order."""
    special = torch.isin(ids, torch.as_tensor(list(special_ids), dtype=ids.dtype))
    return minitx_mask_tokens(ids, special, vocab_size, mask_id, mlm_probability=p, generator=generator,
                              pad_token_id=None, special_ids=list(special_ids))



def build_gpt(vocab_size, max_position, d_model, n_layers, n_heads):
    """minitx's own GPT (dropout off) and the identity name map: the model-level check's reference passes itself."""
    model = GPT(GPTConfig(vocab_size=vocab_size, max_position=max_position, d_model=d_model, n_layers=n_layers,
                          n_heads=n_heads, dropout=0.0, attention_dropout=0.0))
    return model, {name: name for name, _ in model.named_parameters()}

"""Conformance checks for attention and what feeds it: SDPA, multi-head attention, RoPE, sinusoidal positions, LoRA.

A wrong output is compared with the outputs of known mistakes (no 1/sqrt(D), an inverted mask, the causal
diagonal off by one, the interleaved RoPE pairing, LoRA scaled by alpha, ...) so the hint can name the one it
matches. A query row with no allowed key must give zeros and zero gradients (softmax.4).
"""

from __future__ import annotations

import math

import torch

from minitx.conformance import references as R
from minitx.conformance.cases import (Adapter, Mismatch, as_tensor, call, case, check_function, close,
                                      compare, randn)

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
DTYPES = (F32, F32, F16, BF16)
MASKED_ROW = ("softmax.4", "a query row with no allowed key must give zeros (and zero gradients), not NaN: "
                           "guard the softmax's max and sum for an all -inf row, or zero such rows afterwards "
                           "without letting NaN reach the backward")


def _batch(st):
    return st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)


# ------------------------------------------------------------------------------------------------- SDPA

def _sdpa_cases(st):
    return st.builds(lambda batch, n, m, d, dv, mask, scale, mag, dtype, seed: case(
        batch=batch, N=n, M=m, D=d, Dv=dv, mask=mask, scale=scale, magnitude=mag, dtype=dtype, seed=seed),
        _batch(st), st.integers(1, 6), st.integers(1, 6), st.integers(1, 8), st.integers(1, 8),
        st.sampled_from(["none", "bool", "bool_masked_row", "bool_broadcast", "causal"]),
        st.sampled_from([None, 0.3]), st.sampled_from([1.0, 30.0]), st.sampled_from(DTYPES),
        st.integers(0, 2**16))


def _sdpa_mask(c, g):
    if not c.mask.startswith("bool"):
        return None
    shape = (c.N, c.M) if c.mask == "bool_broadcast" else c.batch + (c.N, c.M)
    allowed = torch.rand(shape, generator=g) < 0.6
    allowed[..., torch.arange(c.N), torch.randint(0, c.M, (c.N,), generator=g)] = True  # each row: some key
    if c.mask == "bool_masked_row":
        allowed[..., c.N - 1, :] = False  # the last query may attend to nothing
    return allowed


def _attention_by_hand(q, k, v, allowed, scale, how):
    """Known mistakes, in float64, to name the one a wrong output matches."""
    s = (q @ k.transpose(-2, -1)) * scale  # (..., N, D) @ (..., D, M) -> (..., N, M)
    if how == "after_softmax":
        p = torch.softmax(s, dim=-1) * allowed
    else:
        s = s.masked_fill(~allowed, float("-inf"))
        p = torch.softmax(s, dim=-2 if how == "wrong_axis" else -1).nan_to_num(0.0)
    return p @ v


def _sdpa_explain(c, q, k, v, mask):
    n, m, d = c.N, c.M, c.D
    scale = 1 / math.sqrt(d) if c.scale is None else c.scale
    ones = torch.ones(n, m, dtype=torch.bool)
    allowed = ones.tril() if c.mask == "causal" else (ones if mask is None else mask)
    mistakes = []  # (allowed, scale, how, label, what the learner's code does)
    if c.mask == "causal":
        mistakes += [(ones.tril(-1), scale, "plain", "attn.3", "the causal mask is off by one: query i sees key j "
                                                               "iff j <= i (the diagonal included)"),
                     (ones.tril(1), scale, "plain", "attn.3", "the causal mask is off by one: query i must not see "
                                                              "key i + 1"),
                     (ones.tril(m - n), scale, "plain", "attn.3", "the causal mask is bottom-right aligned; SDPA's "
                                                                  "is_causal is top-left: key j <= query i"),
                     (ones, scale, "plain", "attn.3", "is_causal is ignored")]
    if mask is not None:
        mistakes.append((~mask, scale, "plain", "attn.2", "the mask is inverted: True means *may attend*"))
    for bad, text in ((1.0, "the scores are not scaled by 1/sqrt(D)"),
                      (1.0 / d, "the scores are scaled by 1/D, not 1/sqrt(D)"),
                      (1 / math.sqrt(d), "the `scale` argument is ignored")):
        if bad != scale:
            mistakes.append((allowed, bad, "plain", "attn.1", text))
    mistakes += [(allowed, scale, "wrong_axis", "attn.4", "the softmax runs over the queries (dim=-2), not the keys"),
                 (allowed, scale, "after_softmax", "attn.2", "the mask is applied after the softmax: masked scores "
                                                             "must be -inf *before* it, so kept weights sum to 1")]
    q64, k64, v64 = (t.to(torch.float64) for t in (q, k, v))

    def explain(got, _inputs):
        for bad_allowed, bad_scale, how, label, text in mistakes:
            if close(got, _attention_by_hand(q64, k64, v64, bad_allowed, bad_scale, how), c.dtype):
                return label, f"{text} (the output matches that mistake)"
        if c.mask == "bool_masked_row":
            rest = (Ellipsis, slice(0, c.N - 1), slice(None))
            ref = R.scaled_dot_product_attention(q64, k64, v64, attn_mask=mask, scale=c.scale)
            if close(got[rest], ref[rest], c.dtype):
                return MASKED_ROW
        return None
    return explain


def _sdpa_run(fn, c):
    g = c.generator()
    q = randn(c.batch + (c.N, c.D), g, scale=c.magnitude ** 0.5)
    k = randn(c.batch + (c.M, c.D), g, scale=c.magnitude ** 0.5)
    v = randn(c.batch + (c.M, c.Dv), g)
    mask = _sdpa_mask(c, g)
    try:
        check_function("scaled_dot_product_attention", fn, R.scaled_dot_product_attention, [q, k, v, mask], c.dtype,
                       differentiable=(0, 1, 2), kwargs={"is_causal": c.mask == "causal", "scale": c.scale},
                       value=("attn.1-attn.4", "softmax(scale * q @ k^T with -inf where the mask is False) @ v, "
                                               "scale = 1/sqrt(D) unless given; the softmax over the keys"),
                       grads={0: ("attn.11", "dq = scale * dS @ k"), 1: ("attn.11", "dk = scale * dS^T @ q"),
                              2: ("attn.7", "dv = P^T @ dO")}, seed=c.seed, explain=_sdpa_explain(c, q, k, v, mask))
    except Mismatch as e:
        if c.mask == "bool_masked_row" and ("nan" in e.what or "inf" in e.what) and e.label != "softmax.4":
            e.label, e.hint = MASKED_ROW
        raise


SCALED_DOT_PRODUCT_ATTENTION = Adapter(
    "scaled_dot_product_attention", "scaled_dot_product_attention",
    "scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False, scale=None)", 3,
    ("attn_mask", "is_causal", "scale"), _sdpa_cases,
    (case(batch=(2,), N=3, M=5, D=4, Dv=3, mask="none", scale=None, magnitude=1.0, dtype=F32, seed=20),
     case(batch=(2,), N=4, M=6, D=3, Dv=2, mask="causal", scale=None, magnitude=1.0, dtype=F32, seed=21),
     case(batch=(), N=4, M=4, D=2, Dv=3, mask="bool_masked_row", scale=None, magnitude=1.0, dtype=F32, seed=22),
     case(batch=(1, 2), N=3, M=4, D=8, Dv=2, mask="bool", scale=0.3, magnitude=30.0, dtype=F32, seed=23)),
    _sdpa_run)


# ---------------------------------------------------------------------------------------- multi-head attention

def _mha_cases(st):
    return st.builds(lambda b, n, h, d, padding, causal, seed: case(B=b, N=n, H=h, D=d, padding=padding,
                                                                    is_causal=causal, dtype=F32, seed=seed),
                     st.integers(1, 3), st.integers(1, 5), st.integers(1, 3), st.integers(1, 4),
                     st.sampled_from(["none", "right", "empty_row"]), st.booleans(), st.integers(0, 2**16))


def _mha_inputs(c):
    g = c.generator()
    width = c.H * c.D
    x = randn((c.B, c.N, width), g)
    weights = [randn((width, width), g, scale=width ** -0.5) for _ in range(4)]
    mask = None
    if c.padding != "none":
        lengths = torch.randint(1, c.N + 1, (c.B,), generator=g)
        if c.padding == "empty_row":
            lengths[0] = 0  # a sequence that is all padding
        mask = (torch.arange(c.N)[None, :] < lengths[:, None]).long()  # (B, N), 1 = real token
    return x, weights, mask


def _mha_run(fn, c):
    x, (wq, wk, wv, wo), mask = _mha_inputs(c)
    kwargs = {"attention_mask": mask, "is_causal": c.is_causal}

    def explain(got, inputs):
        x_, wq_, wk_, wv_, wo_ = (t.to(torch.float64) for t in inputs[:5])
        if mask is not None and close(got, R.multi_head_attention(x_, wq_, wk_, wv_, wo_, c.H, 1 - mask,
                                                                  c.is_causal), c.dtype):
            return "mha.2", "attention_mask is inverted: 1 = real token (may be attended), 0 = padding"
        if close(got, R.multi_head_attention(x_, wq_.T, wk_.T, wv_.T, wo_.T, c.H, **kwargs), c.dtype):
            return "mha.1", "weights are in nn.Linear's (out, in) layout: project with x @ W.T"
        return None

    check_function("multi_head_attention", fn, R.multi_head_attention, [x, wq, wk, wv, wo, c.H], c.dtype,
                   differentiable=(0, 1, 2, 3, 4), kwargs=kwargs,
                   value=("mha.1-mha.3", "project with x @ W.T, split heads (B, N, H*D) -> (B, H, N, D) by reshape "
                                         "*then* transpose, scale by 1/sqrt(D) of a head, mask padded keys, merge "
                                         "heads back the same way, then @ o_weight.T"),
                   grads={i: ("mha.1-mha.3", "let autograd see every op (no detach, no .data)") for i in range(5)},
                   seed=c.seed, explain=explain)


MULTI_HEAD_ATTENTION = Adapter(
    "multi_head_attention", "multi_head_attention",
    "multi_head_attention(x, q_weight, k_weight, v_weight, o_weight, n_heads, attention_mask=None, is_causal=False)",
    6, ("attention_mask", "is_causal"), _mha_cases,
    (case(B=2, N=4, H=2, D=3, padding="right", is_causal=False, dtype=F32, seed=30),
     case(B=2, N=3, H=3, D=2, padding="empty_row", is_causal=True, dtype=F32, seed=31)), _mha_run)


# -------------------------------------------------------------------------------------------------- RoPE

def _rope_cases(st):
    return st.builds(lambda lead, n, half, positions, theta, dtype, seed: case(
        lead=lead, N=n, D=2 * half, positions=positions, theta=theta, dtype=dtype, seed=seed),
        _batch(st), st.integers(1, 6), st.integers(1, 6), st.sampled_from(["arange", "offset", "random"]),
        st.sampled_from([10000.0, 100.0, 500000.0]), st.sampled_from(DTYPES), st.integers(0, 2**16))


def _rope_run(fn, c):
    g = c.generator()
    x = randn(c.lead + (c.N, c.D), g)
    positions = {"arange": torch.arange(c.N), "offset": torch.arange(c.N) + 7,
                 "random": torch.randint(0, 200, (c.N,), generator=g)}[c.positions]

    def explain(got, inputs):
        x64 = inputs[0].to(torch.float64)
        pairing = _rope_pairing(fn, c)
        if close(got, R.rope_interleaved(x64, positions, c.theta), c.dtype) or pairing == "interleaved":
            return "pos.3", ("it uses the interleaved pairing (2i, 2i+1), as GPT-J / Meta's original Llama; the "
                             "contract is rotate-half (i, i + D/2), as Hugging Face Llama")
        if close(got, R.rope(x64, -positions, c.theta), c.dtype):
            return "pos.4", f"it rotates the wrong way (pairing: {pairing}): x * cos + rotate_half(x) * sin"
        if c.theta != 10000.0 and close(got, R.rope(x64, positions, 10000.0), c.dtype):
            return "pos.5", f"the theta argument is ignored (pairing: {pairing})"
        if c.positions != "arange" and close(got, R.rope(x64, torch.arange(c.N), c.theta), c.dtype):
            return "pos.4", f"the positions argument is ignored, 0..N-1 used instead (pairing: {pairing})"
        return "pos.3-pos.5", (f"its pairing seems {pairing} (the contract: rotate-half, i with i + D/2); check "
                               f"the frequencies theta^(-2i/D) and the angles positions * frequency")

    check_function("rope", fn, R.rope, [x, positions], c.dtype, differentiable=(0,), kwargs={"theta": c.theta},
                   value=("pos.3-pos.5", "x * cos + rotate_half(x) * sin, rotate_half(x) = (-x2, x1) on the halves"),
                   grads={0: ("pos.4", "a rotation: the gradient is rotated back (let autograd see it)")},
                   seed=c.seed, explain=explain)


def _rope_pairing(fn, c) -> str:
    """Which dimension the learner pairs with dimension 0: rotate e_0 at position 1 and see where it goes."""
    if c.D < 4:
        return "rotate-half"  # D = 2: both pairings are the same
    e0 = torch.zeros(1, c.D, dtype=torch.float32)
    e0[0, 0] = 1.0
    out = fn(e0, torch.tensor([1]), theta=c.theta).detach().abs()[0]
    half, one = float(out[c.D // 2]), float(out[1])
    return "rotate-half" if half > 10 * one else "interleaved" if one > 10 * half else "unclear"


ROPE = Adapter("rope", "rope", "rope(x, positions, theta=10000.0)", 2, ("theta",), _rope_cases,
               (case(lead=(2,), N=5, D=8, positions="random", theta=100.0, dtype=F32, seed=40),), _rope_run)


# --------------------------------------------------------------------------------------- sinusoidal positions

def _sin_run(fn, c):
    out = call("sinusoidal_positions", fn, c.n_positions, c.d_model)
    if isinstance(out, torch.Tensor) and not out.is_floating_point():
        raise Mismatch(f"sinusoidal_positions returned dtype {out.dtype}", "pos.1", "return a float tensor")
    dtype = out.dtype if isinstance(out, torch.Tensor) else F32
    got = as_tensor("sinusoidal_positions", out, (c.n_positions, c.d_model), dtype)
    ref = R.sinusoidal_positions(c.n_positions, c.d_model).to(torch.float64)
    try:
        compare("values", got, ref, None, F32 if dtype == torch.float64 else dtype, "pos.1",
                "PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(p / 10000^(2i/d)): columns 2i and 2i+1 "
                "share one frequency; sin on even columns, cos on odd ones")
    except Mismatch as e:
        if c.d_model % 2 == 0:
            swapped = torch.empty_like(ref)
            swapped[:, 0::2], swapped[:, 1::2] = ref[:, 1::2], ref[:, 0::2]
            if close(got, swapped, F32):
                e.hint = "sin and cos are swapped: sin on even columns (0, 2, ...), cos on odd ones"
            halves = torch.cat((ref[:, 0::2], ref[:, 1::2]), dim=1)
            if close(got, halves, F32):
                e.hint = "the sines and cosines are concatenated in halves; they interleave: column 2i sin, 2i+1 cos"
        raise


def _sin_cases(st):
    return st.builds(lambda n, d: case(n_positions=n, d_model=d), st.integers(1, 40), st.integers(1, 16))


SINUSOIDAL_POSITIONS = Adapter("sinusoidal_positions", "sinusoidal_positions",
                               "sinusoidal_positions(n_positions, d_model)", 2, (), _sin_cases,
                               (case(n_positions=12, d_model=6), case(n_positions=5, d_model=5)), _sin_run)


# -------------------------------------------------------------------------------------------------- LoRA

def _lora_cases(st):
    return st.builds(lambda lead, d_in, d_out, r, alpha, dtype, seed: case(
        lead=lead, d_in=d_in, d_out=d_out, r=r, alpha=alpha, dtype=dtype, seed=seed),
        st.lists(st.integers(1, 3), min_size=1, max_size=2).map(tuple), st.integers(1, 6), st.integers(1, 6),
        st.integers(1, 4), st.sampled_from([1.0, 8.0, 16.0]), st.sampled_from(DTYPES), st.integers(0, 2**16))


def _lora_run(fn, c):
    g = c.generator()
    x = randn(c.lead + (c.d_in,), g)
    w, b = randn((c.d_out, c.d_in), g), randn((c.d_out,), g)
    # B is drawn nonzero: with LoRA's zero initialisation every comparison would pass trivially.
    a_, b_ = randn((c.r, c.d_in), g), randn((c.d_out, c.r), g)

    def explain(got, inputs):
        x64, w64, bias64, a64, b64 = (t.to(torch.float64) for t in inputs[:5])
        for alpha, text in ((c.alpha * c.r, "scaled by alpha instead of alpha / r"),
                            (c.alpha * math.sqrt(c.r), "scaled by alpha / sqrt(r) (rsLoRA), not alpha / r"),
                            (c.r, "not scaled: the low-rank path needs the factor alpha / r")):
            if alpha != c.alpha and close(got, R.lora_linear(x64, w64, bias64, a64, b64, alpha), c.dtype):
                return "lora.5", f"{text} (the output matches that mistake)"
        return None

    check_function("lora_linear", fn, R.lora_linear, [x, w, b, a_, b_, c.alpha], c.dtype,
                   differentiable=(0, 1, 2, 3, 4), kwargs={},
                   value=("lora.1", "x @ W.T + b + (alpha / r) * (x @ A.T) @ B.T, r = lora_A.shape[0]"),
                   grads={0: ("lora.4", "dx = g W + s (g B) A"), 1: ("lora.1", "dW = g^T x"), 2: ("lora.1", "db = sum g"),
                          3: ("lora.2", "dA = s (g B)^T x"), 4: ("lora.3", "dB = s g^T (x A^T)")},
                   seed=c.seed, explain=explain)


LORA_LINEAR = Adapter("lora_linear", "lora_linear", "lora_linear(x, weight, bias, lora_A, lora_B, alpha)", 6, (),
                      _lora_cases, (case(lead=(2, 3), d_in=5, d_out=3, r=4, alpha=8.0, dtype=F32, seed=50),),
                      _lora_run)

__all__ = ["SCALED_DOT_PRODUCT_ATTENTION", "MULTI_HEAD_ATTENTION", "ROPE", "SINUSOIDAL_POSITIONS", "LORA_LINEAR"]

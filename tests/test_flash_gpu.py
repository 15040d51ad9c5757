"""The flash kernel's features in bf16 on a GPU, against a float64 reference (DESIGN: FlashAttention's rule):
sliding windows and bottom-right causal (flash.10), ALiBi (flash.20), grouped-query heads (flash.18), packed
variable-length sequences (flash.19) and dropout (flash.21), plus the tensor-descriptor (TMA) forward against
the pointer one. The error of the kernel in bf16 is at most twice that of the readable math backend in bf16
(plain PyTorch at the same precision, accumulating in fp32) plus a floor of one bf16 rounding of the largest
reference entry. All `gpu`: skipped cleanly without CUDA (the interpreter has no bf16); a GPU session runs
them first (benchmarks/gpu_session.py). Also here, on any machine: the scale's sign and zero (flash.22).
"""

import math
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must be set before triton is imported
pytest.importorskip("triton")

from minitx.attention.front_door import attention  # noqa: E402
from minitx.attention.varlen import varlen_attention  # noqa: E402
from minitx.kernels import flash_autograd  # noqa: E402
from minitx.kernels.flash_attention import dropout_keep_mask, flash_attention  # noqa: E402
from minitx.positional.alibi import alibi_slopes  # noqa: E402

DEVICE = "cpu" if flash_autograd.interpreting() else "cuda"
BF16_EPS = 2.0 ** -8


def _inputs(b, h, h_kv, n, m, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, n, d, generator=g, dtype=torch.float64)
    k, v = (torch.randn(b, h_kv, m, d, generator=g, dtype=torch.float64) for _ in range(2))
    dout = torch.randn(b, h, n, d, generator=g, dtype=torch.float64)
    # every computation sees the same bf16-rounded inputs; the reference computes on them in float64
    return [t.to(torch.bfloat16).to(device=DEVICE, dtype=torch.float64) for t in (q, k, v, dout)]


def _run(fn, tensors, dtype):
    *qkv, dout = tensors
    leaves = [t.detach().to(dtype).clone().requires_grad_() for t in qkv]  # fresh leaves: no grad carried over
    out = fn(*leaves)
    out.backward(dout.to(dtype))
    return [x.detach().double() for x in (out, *(t.grad for t in leaves))]


def check_rule(flash_fn, math_fn, tensors):
    """out, dQ, dK, dV of flash_fn in bf16 within 2 x (math_fn in bf16) + floor of math_fn in float64."""
    exact = _run(math_fn, tensors, torch.float64)
    plain = _run(math_fn, tensors, torch.bfloat16)
    got = _run(flash_fn, tensors, torch.bfloat16)
    for name, e, p, g in zip(("out", "dq", "dk", "dv"), exact, plain, got):
        assert torch.isfinite(g).all(), name
        floor = BF16_EPS * e.abs().max().item()
        err, err_plain = (g - e).abs().max().item(), (p - e).abs().max().item()
        assert err <= 2 * err_plain + floor, f"{name}: flash {err:.3g} > 2 x plain {err_plain:.3g} + {floor:.3g}"


FEATURES = {  # name -> (H, H_kv, N, M, front-door options)
    "window": (4, 4, 1000, 1000, dict(window=(128, 64))),
    "window_causal": (4, 4, 1500, 1500, dict(is_causal=True, window=(256, 0))),
    "bottom_right_causal": (4, 4, 700, 2100, dict(is_causal=True, causal_align="bottom_right")),
    "alibi": (8, 8, 1024, 1024, dict(is_causal=True, alibi_slopes=alibi_slopes(8))),
    "gqa": (8, 2, 1024, 1024, dict(is_causal=True)),
    "mqa_window_alibi": (4, 1, 900, 1300, dict(is_causal=True, causal_align="bottom_right", window=(200, 0),
                                               alibi_slopes=alibi_slopes(4))),
}


@pytest.mark.gpu
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("feature", sorted(FEATURES))
def test_gpu_bf16_features_follow_the_tolerance_rule(feature, d):
    h, h_kv, n, m, options = FEATURES[feature]
    options = {k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in options.items()}
    tensors = _inputs(2, h, h_kv, n, m, d, seed=d)
    check_rule(lambda q, k, v: attention(q, k, v, backend="flash", **options),
               lambda q, k, v: attention(q, k, v, backend="math", **options), tensors)


@pytest.mark.gpu
@pytest.mark.parametrize("d", [64, 128])
def test_gpu_bf16_varlen_follows_the_tolerance_rule(d):
    lengths_q, lengths_k = [300, 1, 777, 64], [500, 17, 777, 1000]
    cu_q, cu_k = (torch.tensor([0, *torch.tensor(x).cumsum(0).tolist()], device=DEVICE) for x in (lengths_q, lengths_k))
    g = torch.Generator().manual_seed(d)
    tq, tk = sum(lengths_q), sum(lengths_k)
    tensors = [torch.randn(rows, 4, d, generator=g, dtype=torch.float64).to(torch.bfloat16)
               .to(device=DEVICE, dtype=torch.float64) for rows in (tq, tk, tk, tq)]
    tensors[1], tensors[2] = tensors[1][:, :2], tensors[2][:, :2]  # GQA too: 4 query heads, 2 key/value heads
    opts = dict(is_causal=True, causal_align="bottom_right")
    check_rule(lambda q, k, v: varlen_attention(q, k, v, cu_q, cu_k, backend="flash", **opts),
               lambda q, k, v: varlen_attention(q, k, v, cu_q, cu_k, backend="math", **opts), tensors)


@pytest.mark.gpu
@pytest.mark.parametrize("d", [64, 128])
def test_gpu_bf16_dropout_follows_the_tolerance_rule(d):
    """(flash.21): the reference applies the kernel's own Philox mask by hand, (P o Z / (1 - p)) V."""
    p_drop, seed, b, h, n = 0.2, 4321, 2, 4, 1024
    keep = dropout_keep_mask((b, h, n, n), p_drop, seed, device=DEVICE)
    causal = torch.ones(n, n, dtype=torch.bool, device=DEVICE).tril()

    def by_hand(q, k, v):
        s = (q.float() @ k.float().transpose(-1, -2) / math.sqrt(d)).masked_fill(~causal, float("-inf"))
        return ((torch.softmax(s, -1) * keep / (1 - p_drop)).to(q.dtype).float() @ v.float()).to(q.dtype) \
            if q.dtype != torch.float64 else (torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d)
                                                            + torch.where(causal, 0.0, float("-inf")), -1)
                                              * keep / (1 - p_drop)) @ v
    check_rule(lambda q, k, v: flash_attention(q, k, v, causal=True, dropout_p=p_drop, dropout_seed=seed),
               by_hand, _inputs(b, h, h, n, n, d, seed=7))


@pytest.mark.gpu
def test_gpu_tma_forward_equals_the_pointer_forward():
    """The tensor-descriptor loads (sm_90+) give bit-identical outputs to pointer loads of the same tiles."""
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("tensor descriptors need sm_90 or newer")
    q, k, v, _ = _inputs(2, 4, 4, 1000, 1000, 128)
    q, k, v = (t.to(torch.bfloat16) for t in (q, k, v))
    with_tma = flash_attention(q, k, v, causal=True)
    use_tma = flash_autograd._use_tma
    try:
        flash_autograd._use_tma = lambda *a: False
        flash_autograd.LAST_LAUNCH.clear()
        without = flash_attention(q, k, v, causal=True)
    finally:
        flash_autograd._use_tma = use_tma
    torch.testing.assert_close(with_tma, without, rtol=0, atol=2 * BF16_EPS * with_tma.abs().max().item())


@pytest.mark.parametrize("scale", [-0.3, 0.0], ids=["negative", "zero"])
def test_scale_of_any_sign_matches_math(scale):
    """(flash.22): the kernels need a positive scale to fold it into the row max; a negative one runs as
    |scale| with -k (dK negated back), zero as q = 0 (dQ = 0): the same values and gradients as math."""
    dtype = torch.float32
    tensors = [t.to(dtype) for t in _inputs(1, 2, 2, 19, 23, 16, seed=3)]
    got = _run(lambda q, k, v: flash_attention(q, k, v, causal=True, scale=scale), tensors, dtype)
    want = _run(lambda q, k, v: attention(q, k, v, backend="math", is_causal=True, scale=scale), tensors, dtype)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        torch.testing.assert_close(a, b, rtol=2e-4, atol=2e-5, msg=lambda m: f"{name}: {m}")
    assert got[1].abs().sum() > 0 if scale else got[1].abs().sum() == 0  # dQ: zero exactly when scale is

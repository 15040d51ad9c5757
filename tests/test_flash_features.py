"""What FlashAttention users ask for, in the Triton kernel, against the readable math backend (values and
gradients): grouped-query / multi-query k, v (flash.18), head dims up to 256 (flash.8), bottom-right causal
alignment and sliding windows (flash.10), ALiBi (flash.20), packed variable-length sequences (flash.19),
Philox dropout (flash.21, against a reference given the kernel's own mask); and
the loop split into masked / unmasked ranges (flash.17) checked exhaustively on small grids.

Under the interpreter (no CUDA) at small odd sizes; the math backend gets the same options through the front
door, which lowers them into masks, a bias and repeated heads (minitx/attention/masks.py).
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must be set before triton is imported
triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from minitx.attention.front_door import attention
from minitx.attention.varlen import varlen_attention  # noqa: E402
from minitx.kernels import flash_autograd  # noqa: E402
from minitx.kernels.flash_kernels import _inner_ranges  # noqa: E402
from minitx.positional.alibi import alibi_slopes  # noqa: E402

DEVICE = "cpu" if flash_autograd.interpreting() else "cuda"


def _inputs(b, h, h_kv, n, m, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, n, d, generator=g)
    k, v = (torch.randn(b, h_kv, m, d, generator=g) for _ in range(2))
    dout = torch.randn(b, h, n, d, generator=g)
    return [t.to(DEVICE) for t in (q, k, v, dout)]


def _run(fn, q, k, v, dout, **kw):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves, **kw)
    out.backward(dout)
    return [out.detach()] + [t.grad for t in leaves]


def check_agrees_with_math(q, k, v, dout, **kw):
    """(flash.1) with the option(s) in `kw`: flash == math on out, dq, dk, dv (fp32, both ways)."""
    got = _run(lambda *t, **o: attention(*t, backend="flash", **o), q, k, v, dout, **kw)
    want = _run(lambda *t, **o: attention(*t, backend="math", **o), q, k, v, dout, **kw)
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        assert g.shape == w.shape, name
        torch.testing.assert_close(g, w, rtol=2e-4, atol=2e-5, msg=lambda m: f"{name}: {m}")
    return got


@pytest.mark.parametrize("h, h_kv", [(4, 2), (3, 1)], ids=["gqa", "mqa"])
def test_grouped_and_multi_query_heads_match_repeated_math(h, h_kv):
    """(flash.18): query head i reads k/v head i // (H / H_kv); dK, dV sum over the group, in one program."""
    q, k, v, dout = _inputs(2, h, h_kv, 13, 21, 16)
    _, _, dk, _ = check_agrees_with_math(q, k, v, dout, is_causal=True)
    assert dk.shape == k.shape and dk.abs().sum() > 0


@pytest.mark.parametrize("d", [256, 160])
def test_head_dims_up_to_256(d):
    """(flash.8): D = 256 and a padded D = 160 (BLOCK_D 256)."""
    q, k, v, dout = _inputs(1, 2, 2, 9, 11, d)
    check_agrees_with_math(q, k, v, dout, is_causal=True)


@pytest.mark.parametrize("n, m", [(7, 45), (45, 7), (33, 33)])
def test_bottom_right_causal_alignment(n, m):
    """(flash.10) with off = M - N: the last query sees every key; N > M leaves the first N - M rows empty."""
    q, k, v, dout = _inputs(2, 2, 2, n, m, 16, seed=n)
    pad = torch.ones(2, m, dtype=torch.bool, device=DEVICE)
    pad[1, : m // 3] = False
    out, dq, _, _ = check_agrees_with_math(q, k, v, dout, is_causal=True, causal_align="bottom_right", key_padding_mask=pad)
    if n > m:
        assert torch.equal(out[:, :, : n - m], torch.zeros_like(out[:, :, : n - m]))
        assert torch.equal(dq[:, :, : n - m], torch.zeros_like(dq[:, :, : n - m]))


@pytest.mark.parametrize("window, causal, align", [((40, 8), False, "top_left"), ((20, 0), True, "bottom_right"),
                                                   ((-1, 3), False, "top_left"), ((5, -1), False, "bottom_right")])
def test_sliding_window(window, causal, align):
    """(flash.10), (flash.17): a band wide enough for unmasked interior tiles (32 x 32 under the interpreter),
    narrow ones, and windows open on one side."""
    q, k, v, dout = _inputs(1, 2, 1, 75, 90, 16, seed=3)
    check_agrees_with_math(q, k, v, dout, window=window, is_causal=causal, causal_align=align)


@pytest.mark.parametrize("causal, align", [(False, "top_left"), (True, "bottom_right")])
def test_alibi_slopes_in_the_kernel(causal, align):
    """(flash.20): -slope_h |j - i - off| added in the kernel == the math backend's float bias."""
    q, k, v, dout = _inputs(1, 4, 2, 19, 40, 16, seed=5)
    check_agrees_with_math(q, k, v, dout, alibi_slopes=alibi_slopes(4).to(DEVICE), is_causal=causal, causal_align=align)


def test_packed_variable_length_sequences():
    """(flash.19): cu_seqlens, no padding; an empty sequence, unequal q and k lengths, GQA, bottom-right."""
    cu_q = torch.tensor([0, 5, 5, 41, 47], device=DEVICE)
    cu_k = torch.tensor([0, 9, 12, 40, 77], device=DEVICE)
    g = torch.Generator().manual_seed(7)
    q, dout = (torch.randn(47, 4, 16, generator=g).to(DEVICE) for _ in range(2))
    k, v = (torch.randn(77, 2, 16, generator=g).to(DEVICE) for _ in range(2))
    kw = dict(is_causal=True, causal_align="bottom_right")
    got = _run(lambda *t: varlen_attention(*t, cu_q, cu_k, backend="flash", **kw), q, k, v, dout)
    want = _run(lambda *t: varlen_attention(*t, cu_q, cu_k, backend="math", **kw), q, k, v, dout)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        torch.testing.assert_close(a, b, rtol=2e-4, atol=2e-5, msg=lambda m: f"{name}: {m}")
    assert torch.equal(got[2][9:12], torch.zeros_like(got[2][9:12]))  # keys of the query-less sequence


def test_tensor_descriptor_path_gives_the_same_bits(monkeypatch):
    """The TMA (tensor-descriptor) loads of the forward, run under the interpreter: zero-filled tails."""
    if not flash_autograd.interpreting():
        pytest.skip("on a GPU the descriptor path is chosen by the architecture")
    q, k, v, dout = _inputs(1, 2, 1, 37, 45, 24, seed=9)
    plain = _run(lambda *t: attention(*t, backend="flash", is_causal=True), q, k, v, dout)
    monkeypatch.setitem(flash_autograd.FORCE_TMA, "fwd", True)
    tma = _run(lambda *t: attention(*t, backend="flash", is_causal=True), q, k, v, dout)
    assert all(torch.equal(a, b) for a, b in zip(plain, tma))


def test_dropout_in_the_kernel_matches_the_same_mask_applied_by_hand():
    """(flash.21): out = (P o Z / (1 - p)) V and its gradients, Z the kernel's Philox mask (exported by
    `dropout_keep_mask`), with GQA so the dK/dV kernel regenerates the mask of every head of a group."""
    from minitx.kernels.flash_attention import dropout_keep_mask, flash_attention

    q, k, v, dout = _inputs(2, 4, 2, 19, 37, 16, seed=11)
    p_drop, seed = 0.3, 1234
    keep = dropout_keep_mask((2, 4, 19, 37), p_drop, seed, device=DEVICE)

    def by_hand(q, k, v):
        k, v = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
        s = (q @ k.transpose(-2, -1) / 4.0).masked_fill(~torch.ones(19, 37, dtype=torch.bool).tril(18).to(DEVICE),
                                                        float("-inf"))
        return (torch.softmax(s, -1) * keep / (1 - p_drop)) @ v
    got = _run(lambda *t: flash_attention(*t, causal=True, causal_align="bottom_right", dropout_p=p_drop,
                                          dropout_seed=seed), q, k, v, dout)
    want = _run(by_hand, q, k, v, dout)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        torch.testing.assert_close(a, b, rtol=2e-4, atol=2e-5, msg=lambda m: f"{name}: {m}")
    again = _run(lambda *t: flash_attention(*t, causal=True, causal_align="bottom_right", dropout_p=p_drop,
                                            dropout_seed=seed), q, k, v, dout)
    assert all(torch.equal(a, b) for a, b in zip(got, again))  # deterministic: same seed, same bits
    kept = keep.float().mean().item()  # 2 x 4 x 19 x 37 = 5624 Bernoulli(0.7) draws: 5 sigma is 0.03
    assert abs(kept - (1 - p_drop)) < 0.03
    assert not torch.equal(keep, dropout_keep_mask((2, 4, 19, 37), p_drop, seed + 1, device=DEVICE))


def test_front_door_dropout_with_flash_is_reproducible_from_torch_seed():
    q, k, v, _ = _inputs(1, 2, 2, 9, 9, 16, seed=2)
    torch.manual_seed(5)
    first = attention(q, k, v, backend="flash", dropout_p=0.5)
    torch.manual_seed(5)
    second = attention(q, k, v, backend="flash", dropout_p=0.5)
    assert torch.equal(first, second) and not torch.allclose(first, attention(q, k, v, backend="flash"))


@triton.jit
def _ranges_kernel(OUT, start, len_outer, len_inner, c, dl, dr, B_OUT: tl.constexpr, B_IN: tl.constexpr,
                   HAS_LO: tl.constexpr, HAS_HI: tl.constexpr):
    lo, a, b, hi = _inner_ranges(start, len_outer, len_inner, c, dl, dr, B_OUT, B_IN, HAS_LO, HAS_HI)
    tl.store(OUT + 0, lo)
    tl.store(OUT + 1, a)
    tl.store(OUT + 2, b)
    tl.store(OUT + 3, hi)


def test_loop_split_covers_every_allowed_pair_and_leaves_interior_tiles_unmasked():
    """(flash.17) exhaustively on small grids: [lo, hi) holds every allowed inner index of the tile's valid
    outer indices, and every tile in [a, b) is inside the inner length and allowed for all of them."""
    if not flash_autograd.interpreting():
        pytest.skip("exhaustive checks are for the interpreter")
    out = torch.zeros(4, dtype=torch.int32)
    checked = interior = 0
    for has_lo, has_hi, c, dl, dr in [(False, True, 0, 0, 0), (False, True, 11, 0, 0), (True, True, 0, 9, 0),
                                      (True, True, -7, 20, 5), (True, False, 3, 4, 0), (False, False, 0, 0, 0)]:
        for len_outer, len_inner in [(40, 40), (13, 50), (50, 13)]:
            for start in range(0, len_outer, 8):
                _ranges_kernel[(1,)](out, start, len_outer, len_inner, c, dl, dr, 8, 4, has_lo, has_hi)
                lo, a, b, hi = out.tolist()
                assert lo <= a <= b <= hi <= len_inner and all(x % 4 == 0 or x == hi for x in (lo, a))
                for t in range(start, min(start + 8, len_outer)):
                    ok = [u for u in range(len_inner) if (not has_lo or u >= t + c - dl) and (not has_hi or u <= t + c + dr)]
                    assert all(lo <= u < hi for u in ok), (start, t, lo, hi)
                    assert set(range(a, b)) <= set(ok), (start, t, a, b)
                checked += 1
                interior += b > a
    assert checked > 50 and interior > 10  # the unmasked range is not always empty


@pytest.mark.parametrize("case", ["causal_gqa_padding", "window_alibi_dropout", "varlen"])
def test_single_kernel_backward_with_atomic_dq_matches_the_deterministic_one(case):
    """(flash.24): the one-kernel backward (dQ by atomic adds) gives the two-kernel backward's gradients --
    and so math's -- with every feature; the deterministic default stays bit-identical run to run."""
    from minitx.kernels.flash_attention import flash_attention, flash_attention_varlen

    q, k, v, dout = _inputs(2, 4, 2, 37, 45, 16, seed=5)
    if case == "varlen":
        cu_q, cu_k = torch.tensor([0, 30, 37, 74]), torch.tensor([0, 5, 45, 90])
        q, dout = (t.transpose(1, 2).reshape(74, 4, 16) for t in (q, dout))
        k, v = (t.transpose(1, 2).reshape(90, 2, 16) for t in (k, v))
        run = lambda det: _run(lambda *t: flash_attention_varlen(*t, cu_q, cu_k, causal=True,  # noqa: E731
                                                                 causal_align="bottom_right",
                                                                 deterministic=det), q, k, v, dout)
    else:
        mask = torch.ones(2, 45, dtype=torch.bool)
        mask[1, 30:] = False
        options = (dict(causal=True, attention_mask=mask.to(DEVICE)) if case == "causal_gqa_padding" else
                   dict(window=(9, 4), alibi_slopes=alibi_slopes(4).to(DEVICE), dropout_p=0.25, dropout_seed=77))
        run = lambda det: _run(lambda *t: flash_attention(*t, deterministic=det, **options),  # noqa: E731
                               q, k, v, dout)
    two, one = run(True), run(False)
    for name, a, b in zip(("out", "dq", "dk", "dv"), two, one):
        torch.testing.assert_close(b, a, rtol=2e-4, atol=2e-5, msg=lambda m: f"{name}: {m}")
    assert one[1].abs().sum() > 0
    assert all(torch.equal(a, b) for a, b in zip(two, run(True)))

"""minitx.functional.label_smoothed_cross_entropy (ls.1)-(ls.4): equal to torch's
`cross_entropy(label_smoothing=...)` and to the textbook form (ls.1), values and gradients, on random shapes,
smoothings and labellings; gradcheck in float64; ignored rows get zero gradient; clear errors."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minitx.functional import cross_entropy, label_smoothed_cross_entropy
from minitx.functional._label_smoothing import _label_smoothing_textbook


def _case(seed, rows, vocab, share, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(rows, vocab, generator=gen, dtype=dtype)).requires_grad_()
    targets = torch.randint(0, vocab, (rows,), generator=gen)
    targets[torch.rand(rows, generator=gen) >= share] = -100
    targets[0] = 1 % vocab
    return logits, targets


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), rows=st.integers(1, 30), vocab=st.integers(2, 40), share=st.floats(0.05, 1.0),
       smoothing=st.floats(0.0, 1.0))
def test_equals_torch_label_smoothing_and_the_textbook_form(seed, rows, vocab, share, smoothing):
    """(ls.1)-(ls.2) the value, (ls.3) the gradient, (ls.4) zero on ignored rows, against torch's own op."""
    logits, targets = _case(seed, rows, vocab, share)
    fast = label_smoothed_cross_entropy(logits, targets, smoothing)
    (g_fast,) = torch.autograd.grad(fast, logits)
    for ref in (_label_smoothing_textbook(logits, targets, smoothing, -100),
                torch.nn.functional.cross_entropy(logits, targets, label_smoothing=smoothing)):
        (g_ref,) = torch.autograd.grad(ref, logits)
        torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(g_fast, g_ref, rtol=1e-9, atol=1e-12)
    ignored = targets == -100
    assert torch.equal(g_fast[ignored], torch.zeros_like(g_fast[ignored]))  # (ls.4)
    torch.testing.assert_close(g_fast.sum(-1), torch.zeros(rows, dtype=g_fast.dtype), atol=1e-12, rtol=0)  # (ls.3)


def test_gradcheck_float64():
    logits, targets = _case(4, 10, 6, 0.6)
    assert torch.autograd.gradcheck(lambda z: label_smoothed_cross_entropy(z, targets, 0.1), (logits,))


def test_zero_smoothing_is_plain_cross_entropy_and_smoothing_raises_the_floor():
    """(ls.2) with eps = 0 is (ce.1); with eps > 0 even perfect logits keep a loss (the entropy of q)."""
    logits, targets = _case(5, 12, 8, 1.0)
    torch.testing.assert_close(label_smoothed_cross_entropy(logits, targets, 0.0), cross_entropy(logits, targets))
    confident = torch.nn.functional.one_hot(targets, 8).double() * 50
    assert float(label_smoothed_cross_entropy(confident, targets, 0.0)) < 1e-10
    assert float(label_smoothed_cross_entropy(confident, targets, 0.1)) > 1.0


def test_bad_arguments_are_named():
    logits, targets = _case(6, 4, 5, 1.0)
    with pytest.raises(ValueError, match="smoothing"):
        label_smoothed_cross_entropy(logits, targets, 1.5)
    with pytest.raises(TypeError, match="targets"):
        label_smoothed_cross_entropy(logits, targets.float(), 0.1)
    with pytest.raises(ValueError, match="targets"):
        label_smoothed_cross_entropy(logits, torch.full((4,), 9), 0.1)

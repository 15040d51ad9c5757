"""minitx.functional.cross_entropy (ce.1)-(ce.3): the fast form equals the textbook form and torch's loss, values
and gradients, on random shapes and labellings; gradcheck in float64; clear errors."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minitx.functional import cross_entropy
from minitx.functional._cross_entropy import _cross_entropy_textbook


def _case(seed, rows, vocab, share, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(rows, vocab, generator=gen, dtype=dtype)).requires_grad_()
    targets = torch.randint(0, vocab, (rows,), generator=gen)
    targets[torch.rand(rows, generator=gen) >= share] = -100
    targets[0] = 1 % vocab  # at least one labelled row
    return logits, targets


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), rows=st.integers(1, 40), vocab=st.integers(2, 50),
       share=st.floats(0.05, 1.0))
def test_fast_form_equals_textbook_and_torch(seed, rows, vocab, share):
    logits, targets = _case(seed, rows, vocab, share)
    fast = cross_entropy(logits, targets)
    (g_fast,) = torch.autograd.grad(fast, logits)
    for ref in (_cross_entropy_textbook(logits, targets, -100),
                torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100)):
        (g_ref,) = torch.autograd.grad(ref, logits)
        torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g_fast, g_ref, rtol=1e-10, atol=1e-12)
    assert torch.equal(g_fast[targets == -100], torch.zeros_like(g_fast[targets == -100]))  # (ce.3)


def test_gradcheck_float64_with_ignored_rows():
    logits, targets = _case(1, 12, 7, 0.5)
    assert torch.autograd.gradcheck(lambda z: cross_entropy(z, targets), (logits,))


def test_any_leading_shape_and_a_custom_ignore_index():
    logits, targets = _case(2, 24, 9, 0.4)
    targets = torch.where(targets == -100, torch.full_like(targets, -1), targets)
    a = cross_entropy(logits.view(2, 3, 4, 9), targets.view(2, 3, 4), ignore_index=-1)
    torch.testing.assert_close(a, torch.nn.functional.cross_entropy(logits, targets, ignore_index=-1))


def test_half_precision_logits_give_a_float32_loss_and_a_half_gradient():
    logits, targets = _case(3, 16, 11, 0.5, dtype=torch.float32)
    half = logits.detach().to(torch.bfloat16).requires_grad_()
    loss = cross_entropy(half, targets)
    loss.backward()
    assert loss.dtype == torch.float32 and half.grad.dtype == torch.bfloat16
    ref = torch.nn.functional.cross_entropy(half.detach().float(), targets)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)


def test_no_labelled_row_is_nan_as_torch_with_zero_gradient():
    logits = torch.randn(4, 5, requires_grad=True)
    targets = torch.full((4,), -100)
    loss = cross_entropy(logits, targets)
    assert torch.isnan(loss) and torch.isnan(torch.nn.functional.cross_entropy(logits, targets))
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros(4, 5))


@pytest.mark.parametrize("targets, error, match", [
    (torch.tensor([0, 5]), ValueError, r"ids in \[0, 5\)"), (torch.tensor([0, -3]), ValueError, "got -3"),
    (torch.tensor([0.0, 1.0]), TypeError, "int64"), (torch.tensor([0, 1, 2]), ValueError, "shape"),
])
def test_bad_targets_name_the_argument(targets, error, match):
    with pytest.raises(error, match=match):
        cross_entropy(torch.randn(2, 5), targets)


def test_bad_logits_name_the_argument():
    with pytest.raises(TypeError, match="logits"):
        cross_entropy(torch.arange(10).view(2, 5), torch.tensor([0, 1]))

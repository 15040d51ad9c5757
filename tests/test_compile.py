"""minitx.training.compile: the optional torch.compile of the hand-written bodies (`--compile`); eager by default."""

import pytest
import torch

from minitx import functional as mf
from minitx.functional import _bodies
from minitx.training.compile import apply_compile, compile_bodies, eager_bodies, is_compiled


def test_eager_by_default_and_eager_bodies_restores():
    assert not is_compiled()
    assert {"gelu.forward", "layer_norm.forward", "layer_norm.backward", "softmax.forward",
            "softmax.backward"} <= set(_bodies.EAGER)
    apply_compile(False)
    assert not is_compiled()
    try:
        compile_bodies()  # swaps in lazily compiled copies; nothing is compiled until a call
        assert is_compiled()
    finally:
        eager_bodies()
    assert not is_compiled() and all(_bodies.ACTIVE[n] is f for n, f in _bodies.EAGER.items())


@pytest.mark.slow
def test_compiled_bodies_give_the_eager_values_and_gradients():
    """Inductor fuses the elementwise chains; the results agree with eager to float32 rounding."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 8, generator=gen, requires_grad=True)
    g = torch.randn(3, 8, generator=gen)

    def run():  # GELU only: bodies compile lazily, one graph costs seconds, and every body is the same path
        y = mf.gelu(x)
        return (y, *torch.autograd.grad(y, (x,), g))
    want = run()
    try:
        compile_bodies()
        got = run()
    finally:
        eager_bodies()
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)

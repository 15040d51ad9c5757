"""Pure math with hand-written backward passes: softmax, layer norm, RMS norm, GELU, SiLU/SwiGLU, scaled
dot-product attention, cross-entropy.

Every forward is written out with plain tensor ops and every backward is the formula derived in
`docs/math/*.md`, inside a `torch.autograd.Function`, so the code can be read side by side with the
derivation. The equation label in a comment names what that line computes.

One private module per derivation page, so each reads next to its page: `_softmax.py` (softmax.md),
`_layer_norm.py` (layer_norm.md), `_rms_norm.py` (rms_norm.md), `_gelu.py` (gelu.md),
`_swiglu.py` (swiglu.md: silu and swiglu), `_attention.py` (attention.md),
`_cross_entropy.py` (cross_entropy.md, and `IGNORE_INDEX`, the label of positions without a loss);
`_label_smoothing.py` (label_smoothing.md: the original Transformer's label-smoothed cross-entropy);
`_checks.py` holds the
argument checks and the un-broadcasting of gradients they share; `_scalars.py` the one-number tensors the fast
forms pass instead of converting a Python number on every call. Import from `minitx.functional`.

Conventions (see docs/architecture.md): q (..., N, D), k (..., M, D), v (..., M, Dv); boolean masks use
True = may attend; a query row with no allowed key gives zeros and zero gradients, never NaN.
"""

from minitx.functional._attention import causal_mask, scaled_dot_product_attention
from minitx.functional._cross_entropy import IGNORE_INDEX, cross_entropy
from minitx.functional._checks import _sum_to_shape  # noqa: F401 (tested directly: tests/test_functional.py)
from minitx.functional._gelu import gelu, gelu_tanh
from minitx.functional._label_smoothing import label_smoothed_cross_entropy
from minitx.functional._layer_norm import layer_norm
from minitx.functional._rms_norm import rms_norm
from minitx.functional._softmax import softmax
from minitx.functional._swiglu import silu, swiglu

__all__ = ["softmax", "layer_norm", "gelu", "gelu_tanh", "causal_mask", "scaled_dot_product_attention",
           "cross_entropy", "IGNORE_INDEX", "label_smoothed_cross_entropy", "rms_norm", "silu", "swiglu"]

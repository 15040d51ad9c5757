"""Positional information for attention, which on its own is blind to order (docs/math/positional.md).

`absolute`: tables added to the input (sinusoidal, learned); `rope`: rotations of q and k; `alibi`: a bias on the
scores. Import each from its module, e.g. `from minitx.positional.rope import RotaryEmbedding`.
"""

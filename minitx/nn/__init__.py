"""Layers built from the attention and the math below them: norms, feed-forwards, and the one Block.

norms (LayerNorm, RMSNorm), feed_forward (FeedForward: GELU or tanh-GELU MLP; SwiGLU), block (Block,
set_blocks_backend).
Import each name from its module, e.g. `from minitx.nn.block import Block`.
"""

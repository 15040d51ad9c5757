"""Attention, lowest layer first: checks, masks (lowering), backends (the registry), front_door (`attention`),
varlen (packed sequences), cache (the KV cache), multi_head (`MultiHeadAttention`). Import each name from its
module, e.g. `from minitx.attention.multi_head import MultiHeadAttention`; `minitx.MultiHeadAttention` too.
"""

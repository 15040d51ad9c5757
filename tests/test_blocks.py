"""minitx.nn: LayerNorm, FeedForward, Block (docs/math/residual_blocks.md)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minitx.nn.block import Block, standard_block
from minitx.nn.feed_forward import FeedForward
from minitx.nn.norms import LayerNorm


def check_close(a, b, atol=1e-6, rtol=1e-5):
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol)

F64 = torch.float64


def _copy_from_torch_layer(block: Block, ref: torch.nn.TransformerEncoderLayer) -> None:
    """Map torch's names onto ours: in_proj -> q/k/v_proj, linear1/2 -> fc_in/out, norm1/2 -> the two norms."""
    w_q, w_k, w_v = ref.self_attn.in_proj_weight.detach().chunk(3)
    b_q, b_k, b_v = ref.self_attn.in_proj_bias.detach().chunk(3)
    a, ff = block.attention, block.feed_forward
    pairs = [(a.q_proj, w_q, b_q), (a.k_proj, w_k, b_k), (a.v_proj, w_v, b_v),
             (a.out_proj, ref.self_attn.out_proj.weight, ref.self_attn.out_proj.bias),
             (ff.fc_in, ref.linear1.weight, ref.linear1.bias), (ff.fc_out, ref.linear2.weight, ref.linear2.bias),
             (block.attention_norm, ref.norm1.weight, ref.norm1.bias), (block.ffn_norm, ref.norm2.weight, ref.norm2.bias)]
    with torch.no_grad():
        for mod, w, b in pairs:
            mod.weight.copy_(w)
            mod.bias.copy_(b)


@pytest.mark.parametrize("norm_first", [False, True], ids=["post-LN", "pre-LN"])
@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_encoder_block_equals_torch_transformer_encoder_layer(norm_first, backend):
    """(block.1)-(block.2) post-LN and (block.3)-(block.4) pre-LN against PyTorch's own layer, with padding."""
    torch.manual_seed(0)
    ref = torch.nn.TransformerEncoderLayer(16, 4, 40, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=norm_first, layer_norm_eps=1e-6).double().eval()
    ref.self_attn.in_proj_bias.data.normal_()  # torch starts biases and LN at 0/1; make them matter
    ref.norm1.weight.data.normal_()
    ref.norm2.bias.data.normal_()
    block = standard_block(16, 4, 40, dropout=0.0, norm_first=norm_first, layer_norm_eps=1e-6,
                         backend=backend).double().eval()
    _copy_from_torch_layer(block, ref)
    x = torch.randn(2, 7, 16, dtype=F64, requires_grad=True)
    real = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    expected = ref(x, src_key_padding_mask=real == 0)
    out = block(x, key_padding_mask=real.bool())
    torch.testing.assert_close(out[real.bool()], expected[real.bool()])  # torch's fast path zeroes pad rows
    g_ref, = torch.autograd.grad(expected[real.bool()].sum(), x)
    g, = torch.autograd.grad(out[real.bool()].sum(), x)
    torch.testing.assert_close(g, g_ref)


@settings(max_examples=15)
@given(shape=st.sampled_from([(3, 5), (2, 4, 7), (1,)]), eps=st.sampled_from([1e-5, 1e-12, 0.1]),
       seed=st.integers(0, 1000))
def test_layer_norm_module_equals_torch(shape, eps, seed):
    """(block.5): gamma * (x - mean) / sqrt(var + eps) + beta over the last dim."""
    g = torch.Generator().manual_seed(seed)
    ln = LayerNorm(shape[-1], eps=eps).double()
    with torch.no_grad():
        ln.weight.copy_(torch.randn(shape[-1], generator=g))
        ln.bias.copy_(torch.randn(shape[-1], generator=g))
    x = torch.randn(shape, generator=g, dtype=F64) * 3 + 1
    expected = torch.nn.functional.layer_norm(x, shape[-1:], ln.weight, ln.bias, eps)
    torch.testing.assert_close(ln(x), expected)


def test_feed_forward_is_linear_gelu_linear():
    """(block.6) with the exact erf GELU."""
    torch.manual_seed(0)
    ff = FeedForward(6, 11).double()
    x = torch.randn(2, 3, 6, dtype=F64)
    expected = ff.fc_out(torch.nn.functional.gelu(ff.fc_in(x), approximate="none"))
    torch.testing.assert_close(ff(x), expected)
    assert ff.fc_in.weight.shape == (11, 6) and ff.fc_out.weight.shape == (6, 11)


def test_pre_ln_residual_stream_is_an_identity_path():
    """(block.7): with the branches silenced, pre-LN passes x through exactly (so gradients reach the bottom
    of a deep stack unscaled); post-LN still renormalises it at every layer."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8, dtype=F64) * 4 + 2
    for norm_first in (True, False):
        block = standard_block(8, 2, 16, dropout=0.0, norm_first=norm_first).double()
        with torch.no_grad():
            for lin in (block.attention.out_proj, block.feed_forward.fc_out):
                lin.weight.zero_()
                lin.bias.zero_()
        out = block(x)
        if norm_first:
            torch.testing.assert_close(out, x)
        else:
            ln = torch.nn.functional.layer_norm
            torch.testing.assert_close(out, ln(ln(x, (8,), eps=1e-5), (8,), eps=1e-5))  # one LN per sublayer
            assert not torch.allclose(out, x)


def test_dropout_acts_in_training_only():
    torch.manual_seed(0)
    block = standard_block(8, 2, 16, dropout=0.3).double()
    plain = standard_block(8, 2, 16, dropout=0.0).double()
    plain.load_state_dict(block.state_dict())
    x = torch.randn(2, 5, 8, dtype=F64)
    block.eval()
    plain.eval()
    torch.testing.assert_close(block(x), plain(x))
    block.train()
    assert not torch.allclose(block(x), plain(x))
    assert block.attention.dropout == 0.3
    assert standard_block(8, 2, 16, dropout=0.3, attention_dropout=0.0).attention.dropout == 0.0


def test_block_returns_attention_weights():
    torch.manual_seed(0)
    block = standard_block(8, 2, 16, dropout=0.0).eval()
    x = torch.randn(1, 4, 8)
    out, w = block(x, is_causal=True, return_weights=True)
    torch.testing.assert_close(out, block(x, is_causal=True))
    assert torch.equal(w[0, 0] > 0, torch.ones(4, 4, dtype=torch.bool).tril())  # causal: no weight on the future
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 2, 4))


def test_bad_input_errors_name_the_argument():
    with pytest.raises(ValueError, match="d_model"):
        standard_block(10, 3, 16)
    with pytest.raises(ValueError, match="dropout"):
        standard_block(8, 2, 16, dropout=1.5)
    with pytest.raises(ValueError, match="attention_dropout"):
        standard_block(8, 2, 16, attention_dropout=-0.1)
    with pytest.raises(ValueError, match="x"):
        LayerNorm(8)(torch.randn(2, 6))
    with pytest.raises(ValueError, match="backend"):
        standard_block(8, 2, 16, backend="nope")
    from functools import partial

    from minitx.attention.multi_head import MultiHeadAttention
    parts = dict(feed_forward=torch.nn.Identity(), norm=partial(LayerNorm, 8))
    with pytest.raises(TypeError, match="attention: expected a MultiHeadAttention"):
        Block(None, **parts)
    with pytest.raises(TypeError, match="cross_attention"):
        Block(MultiHeadAttention(8, 2), **parts, cross_attention=torch.nn.Identity())
    with pytest.raises(TypeError, match="norm: expected a factory"):
        Block(MultiHeadAttention(8, 2), torch.nn.Identity(), LayerNorm(8))
    with pytest.raises(TypeError, match="feed_forward"):
        Block(MultiHeadAttention(8, 2), lambda x: x, partial(LayerNorm, 8))


# ------------------------------------------------------------------------------------------ the Block's seams
class _Doubler(torch.nn.Module):
    """A feed-forward part no family uses: the Block must run whatever module it is handed."""

    def forward(self, x):
        return 2.0 * x


@pytest.mark.parametrize("norm_first", [False, True])
def test_block_runs_the_parts_it_is_given(norm_first):
    """(block.1)-(block.4) with a foreign feed-forward and norm: the Block composes, it does not hard-wire."""
    from functools import partial

    from minitx.attention.multi_head import MultiHeadAttention
    torch.manual_seed(0)
    attention = MultiHeadAttention(8, 2).double()
    block = Block(attention, _Doubler(), partial(torch.nn.LayerNorm, 8), norm_first=norm_first,
                  dropout=0.0).double().eval()
    assert type(block.ffn_norm) is torch.nn.LayerNorm and type(block.feed_forward) is _Doubler
    x = torch.randn(2, 5, 8, dtype=F64)
    if norm_first:
        h = x + attention(block.attention_norm(x))  # (block.3)
        want = h + 2.0 * block.ffn_norm(h)  # (block.4)
    else:
        h = block.attention_norm(x + attention(x))  # (block.1)
        want = block.ffn_norm(h + 2.0 * h)  # (block.2)
    torch.testing.assert_close(block(x), want)


@pytest.mark.parametrize("norm_first", [False, True])
def test_cross_attention_sublayer_reads_the_context(norm_first):
    """The decoder block of an encoder-decoder: self-attention, then cross-attention over `context` with its
    own padding mask, then the feed-forward, each (block.1) / (block.3)."""
    torch.manual_seed(0)
    block = standard_block(8, 2, 16, dropout=0.0, norm_first=norm_first, cross_attention=True).double().eval()
    x, ctx = torch.randn(2, 4, 8, dtype=F64), torch.randn(2, 6, 8, dtype=F64)
    ctx_pad = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    sa, ca, ff = block.attention, block.cross_attention, block.feed_forward
    n1, n2, n3 = block.attention_norm, block.cross_attention_norm, block.ffn_norm
    if norm_first:
        h = x + sa(n1(x), is_causal=True)
        h = h + ca(n2(h), ctx, key_padding_mask=ctx_pad)
        want = h + ff(n3(h))
    else:
        h = n1(x + sa(x, is_causal=True))
        h = n2(h + ca(h, ctx, key_padding_mask=ctx_pad))
        want = n3(h + ff(h))
    got = block(x, is_causal=True, context=ctx, context_padding_mask=ctx_pad)
    torch.testing.assert_close(got, want)
    changed = ctx.clone()
    changed[1, 3:] = 100.0  # padding of the context: no effect; real context: an effect
    torch.testing.assert_close(block(x, is_causal=True, context=changed, context_padding_mask=ctx_pad)[1], got[1])
    assert not torch.allclose(block(x, is_causal=True, context=ctx * 2, context_padding_mask=ctx_pad), got)
    with pytest.raises(ValueError, match="context"):
        block(x)  # a cross-attention block without its context
    with pytest.raises(ValueError, match="context"):
        standard_block(8, 2, 16)(x, context=ctx)  # a context for a block without cross-attention


def test_block_weights_are_stored_input_major_with_the_same_values_and_gradients():
    """minitx.nn.linear: store_input_major makes every Linear weight the transpose of an (in, out) row-major
    tensor; the parameter keeps nn.Linear's shape, state-dict name and values, and a forward/backward equals
    the one with ordinary (out, in) storage."""
    import copy

    from torch import nn

    from minitx.nn.linear import store_input_major
    torch.manual_seed(0)
    block = standard_block(16, 4, 32, dropout=0.0)
    before = {k: v.clone() for k, v in block.state_dict().items()}
    store_input_major(block)
    assert all(torch.equal(before[k], v) for k, v in block.state_dict().items())
    linears = [m for m in block.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 6
    fused = {block.attention.q_proj, block.attention.k_proj, block.attention.v_proj}
    for layer in linears:
        out_features, in_features = layer.weight.shape
        assert layer.weight.stride() == (1, out_features) and layer.weight.t().is_contiguous()
    assert len(fused) == 3
    plain = copy.deepcopy(block)
    for layer in (m for m in plain.modules() if isinstance(m, nn.Linear)):
        layer.weight = nn.Parameter(layer.weight.detach().contiguous())  # ordinary (out, in) storage
        assert layer.weight.is_contiguous()
    x = torch.randn(2, 5, 16)
    y, y_plain = block(x), plain(x)
    check_close(y, y_plain)
    y.square().sum().backward()
    y_plain.square().sum().backward()
    for (name, p), (_, q) in zip(block.named_parameters(), plain.named_parameters()):
        check_close(p.grad, q.grad)
    state = block.state_dict()
    assert state["attention.q_proj.weight"].shape == (16, 16)
    fresh = store_input_major(standard_block(16, 4, 32, dropout=0.0))
    fresh.load_state_dict(state)  # loads into the strided parameters by copy
    assert torch.equal(fresh.attention.q_proj.weight, block.attention.q_proj.weight)
    assert fresh.attention.q_proj.weight.stride() == (1, 16)


def test_dropout_is_skipped_only_where_it_is_the_identity():
    """minitx.nn.dropout.drop: eval mode or p = 0 returns the input itself; training with p > 0 drops; a forward
    hook on the module runs either way."""
    from torch import nn

    from minitx.nn.dropout import drop
    x = torch.ones(1000)
    dropout = nn.Dropout(0.5)
    assert drop(dropout.eval(), x) is x and drop(nn.Dropout(0.0).train(), x) is x
    y = drop(dropout.train(), x)
    assert 300 < int((y == 0).sum()) < 700 and torch.all((y == 0) | (y == 2.0))
    seen = []
    dropout.eval().register_forward_hook(lambda module, args, out: seen.append(out))
    assert drop(dropout, x) is x and len(seen) == 1  # a user's hook on the module still runs

"""Hook points (minitx.hooks): activations read and replaced on the way, in BERT and the GPT alike."""

import pytest
import torch

from minitx.hooks import add_hooks, hook_names, using_hooks
from minitx.models.bert import BertConfig, BertModel
from minitx.models.gpt import GPT, GPTConfig


def gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=23, max_position=16, d_model=16, n_layers=2, n_heads=4)).eval()


def test_every_block_and_attention_lists_its_points():
    names = hook_names(gpt())
    for i in (0, 1):
        assert {f"blocks.{i}.resid_pre", f"blocks.{i}.resid_mid", f"blocks.{i}.resid_post", f"blocks.{i}.attn_out",
                f"blocks.{i}.ffn_out", f"blocks.{i}.attention.q", f"blocks.{i}.attention.pattern",
                f"blocks.{i}.attention.z", f"blocks.{i}.feed_forward.hidden"} <= set(names)


def test_reading_the_residual_stream_and_the_pattern():
    """What the hooks see is what the model computes: block 1's resid_post then the final norm gives the
    hidden states; each head's pattern rows are softmax rows (mha.2), causal (dec.2)."""
    model, ids = gpt(), torch.randint(0, 23, (2, 7))
    seen = {}

    def keep(value, name):
        seen[name] = value.detach().clone()
    with torch.no_grad(), using_hooks(model, {name: keep for name in hook_names(model)}):
        out = model(ids)
    torch.testing.assert_close(model.final_norm(seen["blocks.1.resid_post"]), out.hidden)
    torch.testing.assert_close(seen["blocks.1.resid_pre"], seen["blocks.0.resid_post"])
    torch.testing.assert_close(seen["blocks.0.resid_mid"], seen["blocks.0.resid_pre"] + seen["blocks.0.attn_out"])
    pattern = seen["blocks.0.attention.pattern"]
    assert pattern.shape == (2, 4, 7, 7)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(2, 4, 7))
    assert pattern.triu(1).abs().max() == 0  # no weight on the future
    assert all(m._hooks == {} for m in model.modules() if hasattr(m, "_hooks"))  # removed on the way out


def test_ablating_a_head_and_a_neuron_changes_exactly_what_it_should():
    model, ids = gpt(), torch.randint(0, 23, (1, 6))
    with torch.no_grad():
        clean = model(ids).logits

        def zero_head(z, name):
            z = z.clone()
            z[:, 2] = 0.0  # head 2's output (B, H, N, D) before out_proj
            return z
        with using_hooks(model, {"blocks.1.attention.z": zero_head}):
            ablated = model(ids).logits
        with using_hooks(model, {"blocks.1.attention.z": lambda z, name: None}):  # None: leave it as it is
            torch.testing.assert_close(model(ids).logits, clean)
        # by hand: the head's slice of out_proj's input set to zero
        w = model.blocks[1].attention.out_proj.weight
        saved = w[:, 8:12].clone()
        w[:, 8:12] = 0.0
        torch.testing.assert_close(model(ids).logits, ablated)
        w[:, 8:12] = saved
        with using_hooks(model, {"blocks.0.feed_forward.hidden": lambda h, name: h * 0}):
            no_mlp = model(ids).logits
    assert not torch.allclose(ablated, clean) and not torch.allclose(no_mlp, clean)


def test_patching_a_pattern_recomputes_the_heads_output():
    """A replaced pattern is what the heads read with: out = pattern @ v. Uniform causal weights give the
    running mean of v."""
    model, ids = gpt(), torch.randint(0, 23, (1, 5))
    seen = {}
    uniform = torch.tril(torch.ones(5, 5)) / torch.arange(1, 6)[:, None]

    def patch(p, name):
        return uniform.expand_as(p).clone()
    with torch.no_grad(), using_hooks(model, {"blocks.0.attention.pattern": patch,
                                             "blocks.0.attention.v": lambda v, n: seen.setdefault("v", v),
                                             "blocks.0.attention.z": lambda z, n: seen.setdefault("z", z)}):
        model(ids)
    running_mean = seen["v"].cumsum(2) / torch.arange(1, 6)[:, None]
    torch.testing.assert_close(seen["z"], running_mean)


def test_bert_has_the_same_points_and_a_bad_name_is_refused():
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=30, d_model=16, n_heads=2, d_ff=32, n_layers=1)).eval()
    assert "blocks.0.attention.pattern" in hook_names(bert)
    with pytest.raises(ValueError, match="no hook point"):
        add_hooks(bert, {"blocks.0.attention.nope": lambda v, n: None})
    with pytest.raises(ValueError, match="expected None or a tensor of shape"):
        with using_hooks(bert, {"blocks.0.resid_mid": lambda v, n: v[:, :1]}):
            bert(torch.randint(0, 30, (1, 4)))
    assert not any(getattr(m, "_hooks", None) for m in bert.modules())


def test_an_unhooked_model_keeps_no_hook_state():
    """Zero cost when unused: no module holds a hook table until a hook is added, and hook() hands the
    very tensor back."""
    model = gpt()
    assert not any("_hooks" in m.__dict__ for m in model.modules())
    x = torch.randn(3)
    assert model.blocks[0].hook("resid_mid", x) is x

"""minitx.interpret: the activation cache, edits, attention maps, the logit lens, direct logit attribution,
patching, probes and head scores, on the GPT and BERT (docs/math/interpretability.md, (interp.1)-(interp.14))."""

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from minitx.hooks import hook_names
from minitx.interpret.cache import ActivationCache, block_stacks, run_with_cache, run_with_hooks
from minitx.interpret.edits import ablate_heads, ablate_neurons, mean_activation, patch_from
from minitx.interpret.lens import direct_logit_attribution, logit_lens, readout
from minitx.interpret.maps import attention_patterns, attention_rollout
from minitx.interpret.patching import ablate_each_head, patch_heads, patch_residual
from minitx.interpret.probes import fit_probe
from minitx.interpret.scores import induction_scores, previous_token_scores, repeat_losses, repeated_tokens
from minitx.models.bert import BertConfig, BertForMaskedLM
from minitx.models.gpt import GPT, GPTConfig
from minitx.models.llama import Llama, LlamaConfig
from minitx.models.transformer import Transformer, TransformerConfig

V = 23


def gpt(bias=True, layers=2):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=V, max_position=16, d_model=16, n_layers=layers, n_heads=4, bias=bias)).eval()


def bert(norm_first=False):
    torch.manual_seed(0)
    return BertForMaskedLM(BertConfig(vocab_size=V, d_model=16, n_layers=2, n_heads=4, d_ff=32, max_position=16,
                                      norm_first=norm_first)).eval()


def llama():
    torch.manual_seed(0)
    return Llama(LlamaConfig(vocab_size=V, max_position=16, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2,
                             tie_embeddings=False)).eval()


def ids(batch=2, n=7, seed=1):
    return torch.randint(1, V, (batch, n), generator=torch.Generator().manual_seed(seed))


def no_hooks_left(model):
    return all(not m.__dict__.get("_hooks") for m in model.modules())


# ------------------------------------------------------------------------------------------------- the cache
def test_cache_holds_every_hook_point_and_the_model_computes_from_them():
    """The cache is what the forward computed (interp.1): the last stream through the final norm is the hidden
    state, each block's input is the previous block's output, the patterns are causal softmax rows."""
    model, x = gpt(), ids()
    with torch.no_grad():
        out, cache = run_with_cache(model, x)
        plain = model(x)
        model.set_attention_backend("math")  # what a cached run computes its patterns with
        plain_math = model(x)
        model.set_attention_backend("sdpa")
    torch.testing.assert_close(out.logits, plain_math.logits, rtol=0, atol=0)
    torch.testing.assert_close(out.logits, plain.logits, rtol=1e-5, atol=1e-6)  # the default sdpa: to rounding
    assert set(cache) == set(hook_names(model)) - {"blocks.0.cross_attn_out", "blocks.1.cross_attn_out"}
    torch.testing.assert_close(model.final_norm(cache["blocks.1.resid_post"]), plain.hidden)
    torch.testing.assert_close(cache["blocks.1.resid_pre"], cache["blocks.0.resid_post"])
    patterns = attention_patterns(cache)
    assert patterns.shape == (2, 2, 4, 7, 7)
    torch.testing.assert_close(patterns.sum(-1), torch.ones(2, 2, 4, 7))
    assert patterns.triu(1).abs().max() == 0
    q, k = cache["blocks.0.attention.q"], cache["blocks.0.attention.k"]
    scores = q @ k.transpose(-1, -2) / math.sqrt(4) + torch.full((7, 7), float("-inf")).triu(1)
    torch.testing.assert_close(patterns[0], scores.softmax(-1))  # (interp.1) from the cached q and k
    assert cache["blocks.0.feed_forward.hidden"].shape == (2, 7, 64)
    assert no_hooks_left(model)


def test_cache_for_bert_names_its_stack_and_matches_the_hidden_states():
    model, x = bert(), ids()
    mask = torch.ones_like(x)
    mask[1, 5:] = 0
    with torch.no_grad():
        out, cache = run_with_cache(model, x, attention_mask=mask)
        hidden = model.bert(x, mask)
    assert block_stacks(model) == {"bert.blocks": ["bert.blocks.0", "bert.blocks.1"]}
    torch.testing.assert_close(cache["bert.blocks.1.resid_post"], hidden)
    pattern = cache.stack("attention.pattern")  # (L, B, H, N, M)
    assert pattern[:, 1, :, :, 5:].abs().max() == 0  # padding keys get no weight
    torch.testing.assert_close(pattern.sum(-1), torch.ones(2, 2, 4, 7))


def test_cache_for_any_model_built_from_blocks_with_two_stacks():
    """A family that is only Blocks works without anything else: an encoder-decoder of standard blocks (the
    decoder's with cross-attention) has two stacks, named by their ModuleLists; its cross-attention is cached."""
    from torch import nn

    from minitx.nn.block import standard_block

    class EncoderDecoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.ModuleList(standard_block(16, 2, 32, dropout=0.0) for _ in range(2))
            self.decoder = nn.ModuleList(standard_block(16, 2, 32, dropout=0.0, norm_first=True,
                                                        cross_attention=True) for _ in range(1))

        def forward(self, source, target):
            for block in self.encoder:
                source = block(source)
            for block in self.decoder:
                target = block(target, is_causal=True, context=source)
            return target
    torch.manual_seed(0)
    model, source, target = EncoderDecoder().eval(), torch.randn(2, 5, 16), torch.randn(2, 3, 16)
    out, cache = run_with_cache(model, source, target)
    assert block_stacks(model) == {"encoder": ["encoder.0", "encoder.1"], "decoder": ["decoder.0"]}
    torch.testing.assert_close(cache["decoder.0.resid_post"], out)
    assert cache.stack("attention.pattern", "encoder").shape == (2, 2, 2, 5, 5)
    assert cache["decoder.0.cross_attn_out"].shape == (2, 3, 16)
    with pytest.raises(ValueError, match="several stacks"):
        cache.stack("resid_post")
    hooks = ablate_heads(model, [(0, 1)], stack="decoder")
    assert list(hooks) == ["decoder.0.attention.z"]
    assert not torch.allclose(run_with_hooks(model, source, target, hooks=hooks), out)


def test_cache_names_filter_and_errors():
    model, x = gpt(), ids()
    _, cache = run_with_cache(model, x, names=["blocks.0.resid_post"])
    assert list(cache) == ["blocks.0.resid_post"]
    _, cache = run_with_cache(model, x, names=lambda n: n.endswith("pattern"))
    assert sorted(cache) == ["blocks.0.attention.pattern", "blocks.1.attention.pattern"]
    with pytest.raises(ValueError, match="names"):
        run_with_cache(model, x, names=["blocks.9.resid_post"])
    with pytest.raises(TypeError, match="names"):
        run_with_cache(model, x, names="blocks.0.resid_post")
    with pytest.raises(KeyError, match="not cached"):
        cache["blocks.0.resid_pre"]
    with pytest.raises(TypeError, match="hooks"):
        run_with_hooks(model, x, hooks=42)
    assert no_hooks_left(model)


def test_cache_without_detach_keeps_the_graph():
    model, x = gpt(), ids()
    out, cache = run_with_cache(model, x, detach=False, names=["blocks.0.resid_post"])
    stream = cache["blocks.0.resid_post"]
    (grad,) = torch.autograd.grad(out.logits[0, -1, 3], stream)
    assert grad[0, -1].abs().sum() > 0 and grad[1].abs().max() == 0  # another sequence has no influence


class OpCount(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def ops_of(model, x):
    with torch.no_grad(), OpCount() as counter:
        model(x)
    return counter.ops


def test_zero_cost_when_unused():
    """A model that was cached, ablated and patched runs exactly the same ops afterwards as one never touched:
    no hook left registered, no pattern computed on the side."""
    fresh, used, x = gpt(), gpt(), ids()
    before = ops_of(used, x)
    run_with_cache(used, x)
    run_with_hooks(used, x, hooks=ablate_heads(used, [(0, 1)]))
    assert no_hooks_left(used)
    assert ops_of(used, x) == before == ops_of(fresh, x)
    with torch.no_grad(), OpCount() as counter:
        run_with_cache(used, x, names=["blocks.0.attention.pattern"])
    assert len(counter.ops) > len(before)  # a cached pattern is computed; the plain forward never does


# ------------------------------------------------------------------------------------------------- the edits
def test_zero_ablating_a_head_is_zeroing_its_slice_of_out_proj():
    """(interp.4): z_h <- 0 removes the head's write z_h W_O,h^T and nothing else."""
    model, x = gpt(), ids()
    with torch.no_grad():
        ablated = run_with_hooks(model, x, hooks=ablate_heads(model, [(1, 2), (0, 0)])).logits
        w1, w0 = model.blocks[1].attention.out_proj.weight, model.blocks[0].attention.out_proj.weight
        w1[:, 8:12] = 0.0
        w0[:, 0:4] = 0.0
        by_hand = model(x).logits
    torch.testing.assert_close(ablated, by_hand)


def test_mean_ablation_puts_the_masked_mean_in_place():
    """(interp.4): z_h <- the mean of z_h over the real tokens of a reference batch."""
    model, x = gpt(), ids(batch=3)
    mask = torch.ones_like(x)
    mask[2, 4:] = 0
    mean = mean_activation(model, "blocks.0.attention.z", x, attention_mask=mask)  # (H, D)
    _, cache = run_with_cache(model, x, attention_mask=mask)
    z = cache["blocks.0.attention.z"]  # (B, H, N, D)
    real = mask.bool()
    by_hand = torch.stack([z[:, h][real].mean(0) for h in range(4)])
    torch.testing.assert_close(mean, by_hand)
    seen = {}
    hooks = [ablate_heads(model, [(0, 3)], means={0: mean}),
             {"blocks.0.attention.z": lambda v, n: seen.setdefault("z", v)}]
    run_with_hooks(model, x, hooks=hooks, attention_mask=mask)
    torch.testing.assert_close(seen["z"][:, 3], mean[3].expand(3, 7, 4))
    torch.testing.assert_close(seen["z"][:, :3], z[:, :3])


def test_ablating_neurons_is_zeroing_their_columns_of_fc_out():
    model, x = gpt(), ids()
    with torch.no_grad():
        ablated = run_with_hooks(model, x, hooks=ablate_neurons(model, 0, [3, 17])).logits
        model.blocks[0].feed_forward.fc_out.weight[:, [3, 17]] = 0.0
        torch.testing.assert_close(ablated, model(x).logits)
    with pytest.raises(ValueError, match="neurons"):
        ablate_neurons(model, 0, [64])
    with pytest.raises(ValueError, match="head"):
        ablate_heads(model, [(0, 4)])
    with pytest.raises(ValueError, match="layer"):
        ablate_heads(model, [(2, 0)])


def test_patching_the_whole_stream_restores_the_clean_run():
    """(interp.5): the corrupted run with block 0's input taken from the clean run is the clean run; patched at
    one position only it differs from both."""
    model, clean, corrupted = gpt(), ids(seed=1), ids(seed=2)
    with torch.no_grad():
        clean_out, cache = run_with_cache(model, clean)
        full = run_with_hooks(model, corrupted, hooks=patch_from(cache, "blocks.0.resid_pre")).logits
        torch.testing.assert_close(full, clean_out.logits)
        one = run_with_hooks(model, corrupted, hooks=patch_from(cache, "blocks.0.resid_pre", positions=[0])).logits
    assert not torch.allclose(one, clean_out.logits) and not torch.allclose(one, model(corrupted).logits)
    torch.testing.assert_close(one[:, 0], clean_out.logits[:, 0])  # causal: position 0 sees only itself
    with pytest.raises(ValueError, match="same shape"):
        run_with_hooks(model, ids(n=5), hooks=patch_from(cache, "blocks.0.resid_pre"))
    with pytest.raises(ValueError, match="head"):
        patch_from(cache, "blocks.0.resid_pre", head=1)["blocks.0.resid_pre"](cache["blocks.0.resid_pre"], "x")


def test_patch_heads_and_residual_scans_agree_with_single_patches():
    """(interp.5), (interp.6): each entry of the scan is the run patched by hand; normalised, patching every
    position of the first block's input restores 1 at the position that differs."""
    model = gpt()
    clean = ids(batch=1, n=6, seed=3)
    corrupted = clean.clone()
    corrupted[0, 2] = (clean[0, 2] % (V - 1)) + 1

    def metric(out):
        return out.logits[0, -1, 5] - out.logits[0, -1, 7]
    heads = patch_heads(model, clean, corrupted, metric)
    _, cache = run_with_cache(model, clean)
    by_hand = metric(run_with_hooks(model, corrupted, hooks=patch_from(cache, "blocks.1.attention.z", head=2)))
    assert heads.patched.shape == (2, 4)
    assert heads.patched[1, 2].item() == pytest.approx(by_hand.item(), abs=1e-5)
    assert heads.clean == pytest.approx(metric(model(clean)).item(), abs=1e-5)
    assert heads.corrupted == pytest.approx(metric(model(corrupted)).item(), abs=1e-5)
    resid = patch_residual(model, clean, corrupted, metric).normalized()  # (L, N)
    torch.testing.assert_close(resid[0, 2], torch.tensor(1.0))  # only position 2 differs
    torch.testing.assert_close(resid[0, [0, 1, 3, 4]], torch.zeros(4))  # patching an equal position does nothing


def test_ablate_each_head_scans_every_head():
    model, x = gpt(), ids()

    def metric(out):
        return out.logits[:, -1].logsumexp(-1).mean()
    table = ablate_each_head(model, metric, x)
    assert table.shape == (2, 4)
    by_hand = metric(run_with_hooks(model, x, hooks=ablate_heads(model, [(0, 3)])))
    assert table[0, 3].item() == pytest.approx(by_hand.item(), abs=1e-5)
    assert len(set(table.flatten().tolist())) == 8  # every head changes the output differently


# ------------------------------------------------------------------------------------------------- maps, lens
def test_rollout_is_the_product_of_mixed_head_averages():
    """(interp.2)-(interp.3), by hand: rows stochastic, causal stays lower-triangular, α = 1 gives I."""
    model, x = gpt(), ids()
    _, cache = run_with_cache(model, x)
    patterns = attention_patterns(cache)
    rollout = attention_rollout(patterns)
    eye = torch.eye(7)
    mixed = [0.5 * p.mean(1) + 0.5 * eye for p in patterns]  # rows already sum to 1
    torch.testing.assert_close(rollout, mixed[1] @ mixed[0])
    torch.testing.assert_close(rollout.sum(-1), torch.ones(2, 7))
    assert rollout.triu(1).abs().max() == 0
    torch.testing.assert_close(attention_rollout(patterns, residual_weight=1.0), eye.expand(2, 7, 7))
    with pytest.raises(ValueError, match="patterns"):
        attention_rollout(patterns[0])
    with pytest.raises(ValueError, match="residual_weight"):
        attention_rollout(patterns, 1.5)


@pytest.mark.parametrize("family", ["gpt", "bert", "bert_pre_ln", "llama"])
def test_logit_lens_ends_at_the_model_logits(family):
    """(interp.7): the readout of the last block's output is the model's own logits; the first row reads the
    embeddings."""
    model = {"gpt": gpt, "bert": bert, "bert_pre_ln": lambda: bert(norm_first=True), "llama": llama}[family]()
    x = ids()
    with torch.no_grad():
        out, cache = run_with_cache(model, x)
        lens = logit_lens(model, cache)
    assert lens.shape == (3, 2, 7, V)
    torch.testing.assert_close(lens[-1], out.logits)
    first = next(iter(block_stacks(model).values()))[0]
    torch.testing.assert_close(lens[0], readout(model)(cache[f"{first}.resid_pre"]))
    assert not torch.allclose(lens[0], lens[-1])


@pytest.mark.parametrize("bias", [True, False])
def test_direct_logit_attribution_sums_to_the_logit(bias):
    """(interp.8)-(interp.10): the parts' contributions through the frozen final norm add up to the logit; the
    heads' writes add up to the attention output less its bias."""
    model, x = gpt(bias=bias), ids()
    target = ids(seed=5)
    with torch.no_grad():
        for name, p in model.named_parameters():  # GPT-2's init leaves biases at zero; make them count
            if p.ndim == 1 and not name.endswith("norm.weight"):
                p.normal_(0.0, 0.2)
        out, cache = run_with_cache(model, x)
    dla = direct_logit_attribution(model, cache, target)
    assert dla.heads.shape == (2, 4, 2, 7)
    torch.testing.assert_close(dla.total(), out.logits.gather(-1, target[..., None])[..., 0], atol=1e-5, rtol=1e-5)
    assert dla.heads.abs().sum() > 0 and (dla.norm_bias.abs().sum() > 0) == bias
    # one head by hand: its write, centred, scaled by the final norm's weight / σ, dotted with E[target]
    final = cache["blocks.1.resid_post"]
    sigma = (final.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
    write = cache["blocks.0.attention.z"][:, 1] @ model.blocks[0].attention.out_proj.weight[:, 4:8].T  # (B, N, C)
    write = (write - write.mean(-1, keepdim=True)) / sigma * model.final_norm.weight
    expected = (write * model.token.weight[target]).sum(-1)
    torch.testing.assert_close(dla.heads[0, 1], expected, atol=1e-5, rtol=1e-5)
    _, bert_cache = run_with_cache(bert(), x)
    with pytest.raises(TypeError, match="decoder"):
        direct_logit_attribution(bert(), bert_cache, target)
    with pytest.raises(ValueError, match="target"):
        direct_logit_attribution(model, cache, target[:, :3])
    model.blocks[0].norm_first = False
    with pytest.raises(ValueError, match="pre-LN"):
        direct_logit_attribution(model, cache, target)


# ------------------------------------------------------------------------------------------------- probes, scores
def test_probe_reads_a_linear_property_and_not_a_random_one():
    """(interp.11): a label that is a linear function of the features is read almost perfectly on held-out
    rows; random labels stay at the majority rate."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 12, generator=g)
    y = (x[:, 3] - 2 * x[:, 7] > 0.3).long()
    probe = fit_probe(x, y)
    assert probe.test_accuracy > 0.95 and probe.train_accuracy > 0.95
    assert probe.majority < 0.75
    torch.testing.assert_close(probe.predict(x[:5]), (x[:5].double() @ probe.weight.T + probe.bias).argmax(-1))
    noise = fit_probe(x, torch.randint(0, 2, (400,), generator=g))
    assert noise.test_accuracy < 0.65
    with pytest.raises(ValueError, match="labels"):
        fit_probe(x, y.float())


def test_probe_on_cached_activations_reads_the_current_token():
    """The residual stream after block 0 of a random GPT holds its input token: a probe on it says whether the
    token id (one of six) is even, far above the majority rate."""
    model = gpt()
    x = torch.randint(1, 7, (40, 8), generator=torch.Generator().manual_seed(0))
    _, cache = run_with_cache(model, x, names=["blocks.0.resid_post"])
    probe = fit_probe(cache["blocks.0.resid_post"].flatten(0, 1), (x.flatten() % 2), seed=1)
    assert probe.test_accuracy > 0.9 > probe.majority + 0.2


def test_head_scores_on_exact_patterns():
    """(interp.12)-(interp.13): a pure previous-token head scores 1 on its score and a pure induction head on
    its own; a uniform causal head scores the mean of 1/(i+1)."""
    t, n = 5, 10
    prev = torch.zeros(n, n)
    prev[0, 0] = 1.0
    prev[torch.arange(1, n), torch.arange(0, n - 1)] = 1.0
    induction = torch.eye(n)
    induction[torch.arange(t, n), torch.arange(1, t + 1)] = 1.0
    induction[torch.arange(t, n), torch.arange(t, n)] = 0.0
    uniform = torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None]
    patterns = torch.stack([prev, induction, uniform])[None, None].expand(1, 3, 3, n, n)  # (L, B, H, N, N)
    p, i = previous_token_scores(patterns)[0], induction_scores(patterns, t)[0]
    assert p[0] == 1.0 and i[1] == 1.0
    assert p[1] == pytest.approx(0.0) and i[0] == pytest.approx(0.0)
    assert p[2].item() == pytest.approx(sum(1 / (k + 1) for k in range(1, n)) / (n - 1))
    with pytest.raises(ValueError, match="length"):
        induction_scores(patterns, 4)


def test_repeated_tokens_and_repeat_losses():
    """(interp.14): a model that copies from T tokens back has zero loss on the repeat; the first half of a
    uniform model sits at log V."""
    x = repeated_tokens(V, 6, batch=3, seed=2)
    assert x.shape == (3, 12) and torch.equal(x[:, :6], x[:, 6:])
    logits = torch.zeros(3, 12, V)
    logits[:, 6:11].scatter_(-1, x[:, 7:12, None], 50.0)  # position i predicts token i + 1 = token i - 5
    first, repeat = repeat_losses(logits, x, 6)
    assert first == pytest.approx(math.log(V), abs=1e-5) and repeat < 1e-6


def test_the_package_face_offers_the_main_names():
    import minitx.interpret
    assert minitx.interpret.run_with_cache is run_with_cache and minitx.interpret.patch_heads is patch_heads
    with pytest.raises(AttributeError, match="no_such"):
        minitx.interpret.no_such


def test_cache_type_is_a_mapping_with_stacks():
    model, x = gpt(), ids()
    _, cache = run_with_cache(model, x, names=lambda n: n.endswith("resid_post"))
    assert isinstance(cache, ActivationCache) and len(cache) == 2
    assert cache.stack("resid_post").shape == (2, 2, 7, 16)
    with pytest.raises(ValueError, match="stack"):
        cache.stack("resid_post", stack="decoder.blocks")


def test_direct_logit_attribution_through_rms_norm_sums_to_the_logit():
    """(interp.8)-(interp.10) through a Llama's RMSNorm (no centring, no shift) and its untied head."""
    model, x, target = llama(), ids(), ids(seed=5)
    with torch.no_grad():
        model.final_norm.weight.normal_(1.0, 0.3)  # a gain that is not all ones, so its place in the sum counts
        out, cache = run_with_cache(model, x)
    dla = direct_logit_attribution(model, cache, target)
    torch.testing.assert_close(dla.total(), out.logits.gather(-1, target[..., None])[..., 0], atol=1e-5, rtol=1e-5)
    final = cache["blocks.1.resid_post"]
    rms = (final.pow(2).mean(-1, keepdim=True) + model.config.rms_norm_eps).sqrt()
    write = cache["blocks.0.attention.z"][:, 1] @ model.blocks[0].attention.out_proj.weight[:, 4:8].T  # (B, N, C)
    expected = (write / rms * model.final_norm.weight * model.head.weight[target]).sum(-1)  # no centring
    torch.testing.assert_close(dla.heads[0, 1], expected, atol=1e-5, rtol=1e-5)


def test_the_encoder_decoder_is_cached_stack_by_stack():
    """minitx.Transformer's two stacks of Blocks: the last decoder block's residual gives the model's logits
    through the tied output (tf.5), and cross-attention never looks at a padded source token (tf.4)."""
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=V, max_position=16, d_model=16, n_encoder_layers=2,
                                          n_decoder_layers=2, n_heads=4)).eval()
    source, target = ids(n=7), ids(n=5, seed=3)
    source_mask = torch.ones_like(source)
    source_mask[1, 4:] = 0  # the second source has 4 real tokens
    with torch.no_grad():
        out, cache = run_with_cache(model, source, target, attention_mask=source_mask)
    assert set(block_stacks(model)) == {"encoder", "decoder"}
    torch.testing.assert_close(model.output_logits(cache["decoder.1.resid_post"]), out.logits)
    cross = cache["decoder.0.cross_attention.pattern"]  # (B, H, T, S)
    assert cross.shape == (2, 4, 5, 7)
    assert cross[1, ..., 4:].abs().max() == 0 and cross[0, ..., 4:].abs().max() > 0
    torch.testing.assert_close(cross.sum(-1), torch.ones(2, 4, 5))
    assert attention_patterns(cache, "encoder").shape == (2, 2, 4, 7, 7)

"""The GPT-2-style decoder: causal (dec.2), tied head (dec.3), next-token loss (dec.4), tanh GELU (dec.5),
built from the encoder's own Block, and the same on every attention backend."""

import math

import pytest
import torch
import torch.nn.functional as torch_F

from minitx.functional import IGNORE_INDEX, gelu_tanh
from minitx.models.gpt import GPT, GPTConfig, next_token_loss
from minitx.nn.block import Block


def tiny(**kw):
    torch.manual_seed(0)
    base = dict(vocab_size=31, max_position=16, d_model=16, n_layers=2, n_heads=2)
    return GPT(GPTConfig(**{**base, **kw})).eval()


def test_blocks_are_the_encoders_pre_ln_blocks():
    model = tiny()
    assert all(type(b) is Block and b.norm_first for b in model.blocks)
    assert model.blocks[0].feed_forward.fc_in.out_features == 4 * 16  # d_ff 0 -> 4C, as GPT-2


def test_causal_a_later_token_never_changes_earlier_logits():
    """(dec.2): position i sees keys j <= i only."""
    model = tiny()
    ids = torch.randint(0, 31, (2, 10))
    changed = ids.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % 31
    with torch.no_grad():
        a, b = model(ids).logits, model(changed).logits
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-6)
    assert not torch.allclose(a[:, 6:], b[:, 6:], atol=1e-3)


def test_lm_head_is_tied_to_the_token_embedding():
    """(dec.3): logits = h E^T with E the embedding itself; one matrix, gradients from both uses."""
    model = tiny()
    ids = torch.randint(0, 31, (2, 7))
    out = model(ids)
    assert torch.allclose(out.logits, out.hidden @ model.token.weight.T, atol=1e-6)
    assert sum(p.numel() for p in model.parameters() if p.shape == model.token.weight.shape) == 31 * 16
    out.logits.sum().backward()
    assert model.token.weight.grad is not None and model.token.weight.grad.abs().sum() > 0


def test_next_token_loss_is_mean_negative_log_likelihood():
    """(dec.4) written out: -mean log softmax(logits)[target] over positions with a target."""
    model = tiny()
    ids = torch.randint(0, 31, (3, 8))
    targets = torch.roll(ids, -1, dims=1)
    targets[:, -1] = IGNORE_INDEX
    out = model(ids, targets=targets)
    logp = torch.log_softmax(out.logits, -1)
    keep = targets != IGNORE_INDEX
    want = -logp[keep].gather(-1, targets[keep][:, None]).mean()
    assert torch.allclose(out.loss, want, atol=1e-6)
    untrained = next_token_loss(torch.zeros(2, 4, 31), torch.zeros(2, 4, dtype=torch.long))
    assert math.isclose(float(untrained), math.log(31), rel_tol=1e-6)  # uniform logits: log V


def test_gelu_tanh_is_gpt2s_approximation():
    """(dec.5) against torch's own tanh GELU, and its gradient by gradcheck in float64."""
    x = torch.linspace(-6, 6, 101, dtype=torch.float64, requires_grad=True)
    assert torch.allclose(gelu_tanh(x), torch_F.gelu(x, approximate="tanh"), atol=1e-12)
    assert torch.autograd.gradcheck(gelu_tanh, (x,))
    assert (gelu_tanh(x) - torch_F.gelu(x)).abs().max() > 1e-5  # not the exact GELU


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh"])
def test_backends_agree(activation):
    model = tiny(activation=activation)
    ids = torch.randint(0, 31, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    with torch.no_grad():
        ref = model(ids, attention_mask=mask).logits
        model.set_attention_backend("sdpa")
        got = model(ids, attention_mask=mask).logits
    assert torch.allclose(ref[mask.bool()], got[mask.bool()], atol=1e-5)


def test_gradients_match_between_math_and_sdpa():
    ids = torch.randint(0, 31, (2, 9))
    grads = []
    for backend in ("math", "sdpa"):
        model = tiny(attention_backend=backend)
        model(ids, targets=torch.roll(ids, -1, 1)).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_gpt2_init_scales_the_residual_projections():
    model = GPT(GPTConfig(vocab_size=500, d_model=64, n_layers=8, n_heads=4))
    assert abs(model.token.weight.std().item() - 0.02) < 2e-3
    assert abs(model.blocks[0].attention.out_proj.weight.std().item() - 0.02 / 4) < 1e-3  # 1/sqrt(2*8)
    assert torch.all(model.blocks[0].attention.q_proj.bias == 0)


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="d_model"):
        GPTConfig(d_model=10, n_heads=4)
    with pytest.raises(ValueError, match="activation"):
        GPTConfig(activation="relu")
    model = tiny()
    with pytest.raises(ValueError, match="max_position"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="targets"):
        model(torch.zeros(1, 4, dtype=torch.long), targets=torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="config"):
        GPT({"d_model": 8})


def test_config_round_trips_through_a_dict():
    config = GPTConfig(d_model=32, n_heads=2, activation="gelu_tanh")
    assert GPTConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown"):
        GPTConfig.from_dict({"width": 3})


def test_embedding_is_token_plus_position():
    """(dec.1): x_i = E[t_i] + P[i]."""
    model = tiny()
    ids = torch.randint(0, 31, (2, 6))
    want = model.token.weight[ids] + model.position.weight[:6]
    assert torch.allclose(model.embed(ids), want)
    shifted = model.embed(ids, torch.arange(3, 9)[None])
    assert torch.allclose(shifted, model.token.weight[ids] + model.position.weight[3:9])


def test_flash_backend_agrees_with_math_and_so_does_cached_generation(monkeypatch):
    """The Triton kernel (interpreter on a CPU) runs the decoder's causal + padding path; generation with a
    cache uses it for the prefill (is_causal, M = N) and needs no mask for single-token steps (dec.7)."""
    import importlib

    from minitx.generation.generate import generate
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    pytest.importorskip("triton")
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
    kernels = importlib.import_module("minitx.kernels.flash_kernels")
    if not torch.cuda.is_available() and not all(isinstance(f, InterpretedFunction)
                                                 for f in (tl.zeros, kernels._fwd_kernel)):
        pytest.skip("triton was imported without TRITON_INTERPRET=1 in this process")
    model = tiny(max_position=8)
    ids = torch.randint(0, 31, (2, 6))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    with torch.no_grad():
        ref = model(ids, attention_mask=mask).logits
        greedy = generate(model, ids[:, :3], 3, temperature=0)
        model.set_attention_backend("flash")
        got = model(ids, attention_mask=mask).logits
    assert torch.allclose(ref[mask.bool()], got[mask.bool()], atol=1e-4)
    assert torch.equal(generate(model, ids[:, :3], 3, temperature=0), greedy)
    # (dec.9) on the kernel: 3 new queries over 5 keys (2 cached), bottom-right aligned in the kernel itself
    cache = model.new_cache()
    with torch.no_grad():
        parts = torch.cat([model(ids[:, :2], cache=cache).logits, model(ids[:, 2:5], cache=cache).logits], 1)
    assert torch.allclose(parts[0], ref[0, :5], atol=1e-4)  # row 0 has no padding
    assert torch.allclose(parts[1, :4], ref[1, :4], atol=1e-4)  # row 1: padding from position 4 (causal: unseen)


def test_bias_free_as_nanogpt():
    """bias=False (nanoGPT's default) removes every linear and LayerNorm bias and keeps the model causal."""
    model = tiny(bias=False)
    assert not [n for n, _ in model.named_parameters() if n.endswith("bias")]
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in tiny().parameters())
    ids = torch.randint(0, 31, (1, 8))
    edited = ids.clone()
    edited[0, 5] = (edited[0, 5] + 1) % 31
    with torch.no_grad():
        assert torch.allclose(model(ids).logits[0, :5], model(edited).logits[0, :5], atol=1e-6)
    from minitx.interop.gpt2 import to_hf_gpt2
    with pytest.raises(ValueError, match="bias"):
        to_hf_gpt2(model)


def test_a_torch_hook_on_the_token_embedding_runs_in_either_layout():
    """minitx.nn.linear.lookup reads an input-major E without calling the module, unless a PyTorch forward hook
    would see the call: then the module runs (same values), in eval (input-major) and training layouts."""
    model = tiny(dropout=0.0)  # so the training-mode forwards differ only by the hook
    ids = torch.randint(0, 31, (2, 5))
    for mode in (False, True):
        model.train(mode)
        plain = model.embed(ids)
        seen = []
        handle = model.token.register_forward_hook(lambda module, args, out: seen.append(out) or out * 2)
        hooked = model.embed(ids)
        handle.remove()
        assert len(seen) == 1 and torch.equal(seen[0], model.token.weight.detach()[ids])
        assert not torch.equal(hooked, plain)  # the hook's replacement reached the model


def test_models_store_weights_input_major_after_initialising_them(monkeypatch):
    """minitx.nn.linear: a model's Linear weights and its tied LM head are laid out (in, out) row-major, and only
    once initialised, so a seed draws the same weights as with nn.Linear's own storage."""
    from torch import nn

    import minitx.models.gpt as gpt_module
    config = GPTConfig(vocab_size=11, max_position=8, d_model=8, n_layers=1, n_heads=2)
    torch.manual_seed(3)
    model = GPT(config)
    assert model.token.weight.is_contiguous()  # training mode: the tied head (V, C), as nn.Embedding's
    assert all(m.weight.stride(0) == 1 for m in model.modules() if isinstance(m, nn.Linear))
    token = model.token.weight
    values = token.detach().clone()
    model.eval()  # decoding: (C, V) row-major, the same Parameter and values
    assert model.token.weight is token and token.stride() == (1, 11) and torch.equal(token, values)
    model.train()
    assert token.is_contiguous() and torch.equal(token, values)
    monkeypatch.setattr(gpt_module, "store_input_major", lambda module: module)
    torch.manual_seed(3)
    plain = GPT(config)  # nn.Linear's own (out, in) storage
    assert plain.token.weight.is_contiguous() and plain.blocks[0].attention.q_proj.weight.is_contiguous()
    for (name, p), (_, q) in zip(model.named_parameters(), plain.named_parameters()):
        assert torch.equal(p, q), name

"""minitx GPT against Hugging Face GPT-2 (random weights, offline): logits within 1e-5, with padding, both
activations (exact GELU "gelu" and GPT-2's tanh "gelu_new", dec.5), and greedy generations identical."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from minitx.generation.generate import generate  # noqa: E402
from minitx.interop.gpt2 import config_from_hf_gpt2, from_hf_gpt2, to_hf_gpt2  # noqa: E402
from minitx.models.gpt import GPT, GPTConfig  # noqa: E402

CONFIGS = [  # (n_embd, n_layer, n_head, n_positions, vocab, activation, n_inner)
    (16, 1, 2, 32, 50, "gelu", None),
    (24, 2, 3, 40, 61, "gelu_new", None),
    (32, 2, 4, 48, 97, "gelu_new", 48),
]


def hf_model(n_embd, n_layer, n_head, n_pos, vocab, act, n_inner, seed=0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_embd=n_embd, n_layer=n_layer, n_head=n_head, n_positions=n_pos,
                                     vocab_size=vocab, activation_function=act, n_inner=n_inner,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                     bos_token_id=None, eos_token_id=None, attn_implementation="eager")
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # biases and norms away from their 0/1 init, so every map is exercised
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize("spec", CONFIGS, ids=lambda s: f"C{s[0]}-L{s[1]}-{s[5]}")
@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_logits_match_hf_gpt2_with_padding(spec, backend):
    """(dec.1)-(dec.3) against GPT2LMHeadModel: real positions within 1e-5, right and left padding."""
    hf = hf_model(*spec)
    ours = from_hf_gpt2(hf, attention_backend=backend)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, spec[4], (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # right padding
    mask[2, :3] = 0  # left padding (positions stay 0..N-1 in both models when none are given)
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask).logits
    real = mask.bool()
    assert got.shape == want.shape
    assert torch.allclose(got[real], want[real], atol=1e-5, rtol=0), (got[real] - want[real]).abs().max()
    with torch.no_grad():
        plain = ours(ids).logits
    assert torch.allclose(plain, hf(input_ids=ids).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("spec", CONFIGS[1:], ids=lambda s: f"C{s[0]}-{s[5]}")
def test_greedy_generation_matches_hf_for_24_tokens(spec):
    """The test minGPT keeps against GPT-2: the same greedy continuation, token for token, cached or not."""
    hf = hf_model(*spec, seed=3)
    ours = from_hf_gpt2(hf)
    prompt = torch.randint(0, spec[4], (2, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=24, do_sample=False,
                           pad_token_id=0)
    assert want.shape == (2, 29)
    assert torch.equal(generate(ours, prompt, 24, temperature=0), want)
    assert torch.equal(generate(ours, prompt, 24, temperature=0, use_cache=False), want)


def test_round_trip_to_hf_and_back():
    torch.manual_seed(5)
    ours = GPT(GPTConfig(vocab_size=40, max_position=20, d_model=16, n_layers=2, n_heads=2,
                         activation="gelu_tanh")).eval()
    hf = to_hf_gpt2(ours)
    ids = torch.randint(0, 40, (2, 9))
    with torch.no_grad():
        assert torch.allclose(hf(input_ids=ids).logits, ours(ids).logits, atol=1e-5, rtol=0)
        assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # still tied
    back = from_hf_gpt2(hf)
    for name, tensor in ours.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name


def test_config_refuses_what_minitx_lacks():
    config = transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2, activation_function="relu")
    with pytest.raises(ValueError, match="activation_function"):
        config_from_hf_gpt2(config)
    config = transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2, scale_attn_by_inverse_layer_idx=True)
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        config_from_hf_gpt2(config)
    with pytest.raises(TypeError, match="hf_model"):
        from_hf_gpt2(object())


def test_export_refuses_what_gpt2_lacks():
    """GPT-2 has no grouped-query attention and biases everywhere: such a model is refused by name."""
    for kw, match in ((dict(n_kv_heads=1), "n_kv_heads"), (dict(bias=False), "bias")):
        model = GPT(GPTConfig(vocab_size=11, max_position=8, d_model=16, n_layers=1, n_heads=2, **kw))
        with pytest.raises(ValueError, match=match):
            to_hf_gpt2(model)

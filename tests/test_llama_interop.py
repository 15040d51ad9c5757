"""minitx Llama against Hugging Face LlamaForCausalLM (random weights, offline): logits within 1e-4 for MHA, GQA
and MQA, tied and untied, rope_theta 1e4 and 5e5, with right padding; greedy generation identical to HF's
`generate` for 24 tokens, cached and uncached; HF directories both ways; options minitx lacks refused by name."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from minitx.generation.generate import generate  # noqa: E402
from minitx.interop import from_hf_llama as face_from_hf_llama  # noqa: E402
from minitx.interop.llama import (config_from_hf_llama, from_hf_llama, load_hf_llama, save_hf_llama,  # noqa: E402
                                  to_hf_llama)
from minitx.models.llama import Llama, LlamaConfig  # noqa: E402

SPECS = [  # (hidden, layers, heads, kv_heads, ffn, vocab, tied, rope_theta)
    (32, 2, 4, 4, 48, 61, True, 1e4),      # MHA, tied
    (32, 2, 4, 2, 40, 67, False, 5e5),     # GQA, untied, Llama 3's theta
    (48, 1, 6, 1, 64, 53, True, 5e5),      # MQA
    (32, 2, 4, 1, 56, 71, False, 1e4),     # MQA, untied
]


def hf_llama(hidden, layers, heads, kv, ffn, vocab, tied, theta, max_pos=64, seed=0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn,
                                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                                      max_position_embeddings=max_pos, rope_theta=theta, tie_word_embeddings=tied,
                                      rms_norm_eps=1e-6, bos_token_id=None, eos_token_id=None, pad_token_id=None,
                                      attn_implementation="eager")
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # norm gains away from 1 and weights larger than the 0.02 init, so every map matters
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.3 * torch.randn_like(p) if p.ndim == 1 else torch.randn_like(p) * 0.15)
    return model


def _ids(vocab, shape, seed=1):
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"H{s[2]}-kv{s[3]}-{'tied' if s[6] else 'untied'}-{s[7]:g}")
def test_logits_match_hf_llama_with_right_padding(spec):
    """RMSNorm (rmsnorm.1), SwiGLU (swiglu.4), RoPE (pos.4) and GQA against LlamaForCausalLM: real positions within
    1e-4, a right-padded row included, on the math and sdpa backends."""
    hf = hf_llama(*spec)
    ids = _ids(spec[5], (3, 11))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask).logits
    for backend in ("math", "sdpa"):
        ours = from_hf_llama(hf, attention_backend=backend)
        assert ours.config.kv_heads == spec[3] and ours.config.tie_embeddings == spec[6]
        assert (ours.head is None) == spec[6]
        with torch.no_grad():
            got = ours(ids, attention_mask=mask).logits
        real = mask.bool()
        assert (got[real] - want[real]).abs().max() < 1e-4, backend
        assert want.abs().max() > 1.0  # the logits are not near zero: the comparison has teeth


@pytest.mark.parametrize("spec", [SPECS[1], SPECS[2]], ids=["gqa", "mqa"])
def test_greedy_generation_matches_hf_generate_cached_and_uncached(spec):
    """(dec.6)-(dec.9) with RoPE and n_kv_heads cached heads: 24 greedy tokens equal HF's `generate`."""
    hf = hf_llama(*spec)
    ours = from_hf_llama(hf)
    prompt = _ids(spec[5], (2, 5), seed=3)
    with torch.no_grad():
        want = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=24, do_sample=False,
                           min_new_tokens=24)
    cached = generate(ours, prompt, 24, temperature=0)
    uncached = generate(ours, prompt, 24, temperature=0, use_cache=False)
    assert torch.equal(cached, want)
    assert torch.equal(uncached, want)
    assert len(set(want[0, 5:].tolist())) > 2  # not one token repeated


def test_cache_stores_n_kv_heads_heads():
    """GQA's point for decoding: the cache holds H_kv heads, not H."""
    model = from_hf_llama(hf_llama(*SPECS[1]))
    cache = model.new_cache()
    with torch.no_grad():
        model(_ids(67, (2, 6)), cache=cache)
    assert tuple(cache[0].keys.shape) == (2, 2, 6, 8) and tuple(cache[1].values.shape) == (2, 2, 6, 8)


def test_to_hf_llama_round_trip_and_face(tmp_path):
    """minitx -> HF -> minitx: identical weights and logits within 1e-4 of HF's; the `minitx.interop` face too."""
    torch.manual_seed(0)
    ours = Llama(LlamaConfig(vocab_size=41, max_position=32, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                             d_ff=40, rope_theta=5e5, tie_embeddings=False)).eval()
    hf = to_hf_llama(ours)
    ids = _ids(41, (2, 9))
    with torch.no_grad():
        assert (ours(ids).logits - hf(input_ids=ids).logits).abs().max() < 1e-4
    back = face_from_hf_llama(hf)
    for (name, a), b in zip(ours.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("tied", [True, False])
def test_hf_directories_both_ways(tmp_path, tied):
    """save_hf_llama writes what LlamaForCausalLM.from_pretrained loads (same logits); save_pretrained writes what
    load_hf_llama reads (same logits); the tied head is stored once, as save_pretrained does."""
    hf = hf_llama(*(SPECS[0] if tied else SPECS[1]))
    hf.save_pretrained(tmp_path / "hf")
    ours = load_hf_llama(tmp_path / "hf")
    ids = _ids(hf.config.vocab_size, (2, 10))
    with torch.no_grad():
        want = hf(input_ids=ids).logits
        assert (ours(ids).logits - want).abs().max() < 1e-4
    paths = save_hf_llama(ours, tmp_path / "ours")
    config = json.loads(paths["config"].read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"] is tied
    again = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        assert (again(input_ids=ids).logits - want).abs().max() < 1e-4
    from safetensors.torch import load_file
    assert ("lm_head.weight" in load_file(str(paths["weights"]))) is not tied


@pytest.mark.parametrize("field, value", [("rope_scaling", {"rope_type": "linear", "factor": 2.0}),
                                          ("attention_bias", True), ("mlp_bias", True), ("hidden_act", "gelu"),
                                          ("head_dim", 16), ("model_type", "mistral")])
def test_options_minitx_lacks_are_refused_by_name(field, value):
    values = hf_llama(*SPECS[0]).config.to_dict()
    values[field] = value
    if field == "rope_scaling":
        values.pop("rope_parameters")
    with pytest.raises(ValueError, match=field):
        config_from_hf_llama(values)


def test_ablated_models_are_not_exported():
    model = Llama(LlamaConfig(vocab_size=11, d_model=16, n_heads=2, n_layers=1, norm="layer"))
    with pytest.raises(ValueError, match="config.norm"):
        to_hf_llama(model)

"""Generation: the KV cache (dec.6)-(dec.7) gives the same tokens as recomputing everything, the cached
mask for N new queries over M keys is bottom-right (dec.9) and top-left would be wrong, and sampling."""

import pytest
import torch

from minitx.attention.cache import KVCache, bottom_right_causal_mask
from minitx.attention.front_door import attention
from minitx.functional import causal_mask
from minitx.generation.generate import generate
from minitx.generation.sampling import sample_next
from minitx.models.gpt import GPT, GPTConfig


def tiny(backend="math", **kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=37, max_position=24, d_model=32, n_layers=2, n_heads=4,
                         attention_backend=backend, **kw)).eval()


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_cached_equals_uncached_greedy(backend):
    model = tiny(backend)
    prompt = torch.randint(0, 37, (3, 5), generator=torch.Generator().manual_seed(1))
    cached = generate(model, prompt, 15, temperature=0)
    assert torch.equal(cached, generate(model, prompt, 15, temperature=0, use_cache=False))
    assert torch.equal(cached[:, :5], prompt) and cached.shape == (3, 20)


def test_cached_equals_uncached_sampled_with_a_seed_past_the_window():
    """40 new tokens with a 24-token window: the cache is rebuilt from the window once it is full."""
    model = tiny(activation="gelu_tanh")
    prompt = torch.randint(0, 37, (2, 4), generator=torch.Generator().manual_seed(2))
    a = generate(model, prompt, 40, temperature=1.3, top_k=20, top_p=0.95, seed=7)
    b = generate(model, prompt, 40, temperature=1.3, top_k=20, top_p=0.95, seed=7, use_cache=False)
    assert torch.equal(a, b)
    assert torch.equal(a, generate(model, prompt, 40, temperature=1.3, top_k=20, top_p=0.95, seed=7))
    assert not torch.equal(a, generate(model, prompt, 40, temperature=1.3, top_k=20, top_p=0.95, seed=8))


def test_prefill_then_chunks_equal_one_full_forward():
    """(dec.9): N = 3 new queries over M cached + new keys, then N = 1 (dec.7), against the uncached model."""
    model = tiny()
    ids = torch.randint(0, 37, (2, 12))
    with torch.no_grad():
        full = model(ids).logits
    cache = KVCache(len(model.blocks))
    with torch.no_grad():
        parts = [model(ids[:, a:b], cache=cache).logits for a, b in ((0, 5), (5, 8), (8, 9), (9, 12))]
    assert cache.length == 12 and cache[0].keys.shape == (2, 4, 12, 8)  # (dec.6): (B, H, M, D) per block
    assert torch.allclose(torch.cat(parts, dim=1), full, atol=1e-5)


def test_bottom_right_mask_and_why_top_left_is_wrong_for_a_cache():
    """(dec.9): key j allowed iff j <= i + M - N. The top-left mask (SDPA's is_causal) hides cached keys."""
    br = bottom_right_causal_mask(2, 5)
    assert br.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
    assert torch.equal(bottom_right_causal_mask(4, 4), causal_mask(4, 4))
    assert bottom_right_causal_mask(1, 6).all()  # N = 1: nothing to mask (dec.7)
    q, k, v = torch.randn(1, 1, 2, 4), torch.randn(1, 1, 5, 4), torch.randn(1, 1, 5, 4)
    right = attention(q, k, v, attn_mask=br)
    wrong = attention(q, k, v, is_causal=True)  # top-left: query 0 sees key 0 only
    by_hand = torch.softmax(q @ k.transpose(-1, -2) / 2 + torch.zeros(2, 5).masked_fill(~br, -torch.inf), -1) @ v
    assert torch.allclose(right, by_hand, atol=1e-6)
    assert not torch.allclose(right, wrong, atol=1e-3)
    with pytest.raises(ValueError, match="n, m"):
        bottom_right_causal_mask(3, 2)


def test_sample_next_greedy_top_k_and_top_p():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]]).log_softmax(-1)
    assert sample_next(logits, temperature=0).item() == 1
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_next(logits, top_k=2, generator=g) for _ in range(300)])
    assert set(draws.flatten().tolist()) == {1, 3}  # only the two most likely
    probs = torch.softmax(logits, -1)[0]  # ~[0.03, 0.64, 0.09, 0.24]: top 0.7 needs tokens 1 and 3
    assert probs[1] < 0.7 < probs[1] + probs[3]
    draws = torch.stack([sample_next(logits, top_p=0.7, generator=g) for _ in range(300)])
    assert set(draws.flatten().tolist()) == {1, 3}
    freq = (draws == 1).float().mean().item()  # renormalised: 0.64 / 0.88 ~ 0.73
    assert abs(freq - probs[1] / (probs[1] + probs[3])) < 0.08


def test_generate_checks_its_arguments_and_restores_training_mode():
    model = tiny().train()
    ids = torch.zeros(1, 3, dtype=torch.long)
    for kwargs, name in (({"temperature": -1}, "temperature"), ({"top_k": 0}, "top_k"),
                         ({"top_p": 1.5}, "top_p")):
        with pytest.raises(ValueError, match=name):
            generate(model, ids, 2, **kwargs)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, ids, -1)
    with pytest.raises(ValueError, match="ids"):
        generate(model, torch.zeros(3, dtype=torch.long), 2)
    with pytest.raises(TypeError, match="model"):
        generate(torch.nn.Linear(2, 2), ids, 2)
    out = generate(model, ids, 2, seed=0)
    assert out.shape == (1, 5) and model.training


def test_cache_projects_each_token_once():
    """(dec.8): rows through the q/k/v projections. Without a cache step s reprojects its whole context
    (sum of context lengths); with one, each token is projected exactly once."""
    model = tiny()
    rows = []
    hook = model.blocks[0].attention.k_proj.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[1]))
    prompt, new = torch.zeros(1, 4, dtype=torch.long), 10
    generate(model, prompt, new, temperature=0)
    cached = sum(rows)
    rows.clear()
    generate(model, prompt, new, temperature=0, use_cache=False)
    hook.remove()
    assert cached == 4 + new - 1  # the prompt, then one row per step (the last token is never fed back)
    assert sum(rows) == sum(4 + s for s in range(new))  # 4 + 5 + ... + 13


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_grouped_query_cache_generates_what_the_uncached_model_does(backend):
    """A GPT with 2 key/value heads for 4 query heads (flash.18): the cache holds (B, 2, M, D) per layer, and
    cached and uncached decoding agree, greedy and sampled, across a cache rebuilt past the window."""
    model = tiny(backend, n_kv_heads=2)
    assert model.blocks[0].attention.k_proj.out_features == 2 * 8
    prompt = torch.randint(0, 37, (2, 5), generator=torch.Generator().manual_seed(3))
    for kw in (dict(temperature=0), dict(temperature=1.1, top_k=10, seed=4)):
        assert torch.equal(generate(model, prompt, 30, **kw), generate(model, prompt, 30, use_cache=False, **kw))
    cache = model.new_cache()
    with torch.no_grad():
        model(prompt, cache=cache)
    assert cache[0].keys.shape == (2, 2, 5, 8) and cache.length == 5
    full = tiny(backend)  # the same seed with 4 key/value heads is a different model: the check can fail
    assert not torch.equal(generate(full, prompt, 30, temperature=0), generate(model, prompt, 30, temperature=0))


def test_rope_inside_attention_is_the_same_cached_and_uncached():
    """RoPE applied to q and k inside MultiHeadAttention (pos.4): keys enter the cache rotated at their own
    positions, so chunked decoding equals the full causal pass, and the rotation really is applied."""
    from minitx.attention.cache import LayerKV
    from minitx.attention.multi_head import MultiHeadAttention
    from minitx.positional.rope import RotaryEmbedding
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4, n_kv_heads=2, rotary=RotaryEmbedding(4)).double().eval()
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    full = mha(x, is_causal=True)
    cache = LayerKV()
    parts = torch.cat([mha(x[:, a:b], is_causal=True, cache=cache) for a, b in ((0, 4), (4, 5), (5, 9))], dim=1)
    torch.testing.assert_close(parts, full)
    plain = MultiHeadAttention(16, 4, n_kv_heads=2).double().eval()
    plain.load_state_dict(mha.state_dict())
    assert not torch.allclose(plain(x, is_causal=True), full)
    shifted = mha(x, is_causal=True, positions=torch.arange(3, 12))  # RoPE sees offsets only (pos.6)
    torch.testing.assert_close(shifted, full)

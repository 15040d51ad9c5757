"""minitx.generation.beam (docs/beam_search.md, (beam.1)-(beam.6)) without Hugging Face: beam search finds what
greedy misses, is exhaustive search when the beam holds every prefix, equals greedy with one beam and no EOS,
gives the same answer with and without a KV cache, and reorders the cache by parent. The token-for-token
comparison with transformers' generate is in tests/test_marian_interop.py."""

import itertools
import math

import pytest
import torch

import minitx
from minitx.attention.cache import KVCache
from minitx.generation.beam import beam_search


def table_step(table):
    """A 'model' whose next-token log-probabilities depend on the previous token only: table[prev] (V,)."""
    def step(sequences, reorder):
        return table[sequences[:, -1]].log()
    return step


def test_beam_finds_the_sequence_greedy_misses():
    """(beam.1)-(beam.4): greedy takes 'a' (0.6) and then has only bad continuations; the beam keeps 'b' (0.4)
    whose EOS has probability 0.95, and (beam.6) returns it: 0.38 beats greedy's 0.6 * 0.34."""
    eos, a, b, c, start = 0, 1, 2, 3, 4
    table = torch.full((5, 5), 1e-6)
    table[start, [a, b]] = torch.tensor([0.6, 0.4])
    table[a, [eos, a, b, c]] = torch.tensor([0.34, 0.33, 0.33, 0.0])
    table[b, [eos, c]] = torch.tensor([0.95, 0.05])
    table[c, eos] = 1.0
    table /= table.sum(-1, keepdim=True)
    prompt = torch.tensor([[start]])
    beam = beam_search(table_step(table), prompt, 2, 4, eos, 0, length_penalty=0.0)
    assert beam.tolist() == [[start, b, eos]]
    greedy = beam_search(table_step(table), prompt, 1, 4, eos, 0, length_penalty=0.0)
    assert greedy.tolist()[0][:3] == [start, a, eos]


def tiny_gpt(vocab=4):
    torch.manual_seed(0)
    return minitx.GPT(minitx.GPTConfig(vocab_size=vocab, max_position=8, d_model=16, n_layers=1, n_heads=2)).eval()


def test_a_beam_holding_every_prefix_is_exhaustive_search():
    """With K >= V^(L-1) hypotheses nothing is ever pruned: (beam.6) is the argmax of the summed log-probability
    (length_penalty 0) over all V^L continuations, found here by brute force."""
    model, prompt, length = tiny_gpt(), torch.tensor([[1, 2]]), 3
    out = minitx.generate(model, prompt, length, temperature=0, num_beams=16, length_penalty=0.0)
    best, best_score = None, -math.inf
    with torch.no_grad():
        for tail in itertools.product(range(4), repeat=length):
            ids = torch.cat([prompt, torch.tensor([tail])], dim=1)
            logp = torch.log_softmax(model(ids).logits[0, :-1], -1)
            score = float(logp[torch.arange(1, 1 + length), ids[0, 2:]].sum())
            if score > best_score:
                best, best_score = ids, score
    assert out.tolist() == best.tolist()


def test_one_beam_without_eos_is_greedy_and_the_cache_changes_nothing():
    model = tiny_gpt(vocab=7)
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    greedy = minitx.generate(model, prompt, 5, temperature=0)
    assert torch.equal(minitx.generate(model, prompt, 5, temperature=0, num_beams=1), greedy)
    cached = minitx.generate(model, prompt, 5, temperature=0, num_beams=3)
    uncached = minitx.generate(model, prompt, 5, temperature=0, num_beams=3, use_cache=False)
    assert torch.equal(cached, uncached) and cached.shape == (2, 8)


def test_cache_reorder_follows_the_parents():
    cache = KVCache(2)
    keys = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 1, 2, 4)
    for layer in cache.layers:
        layer.append(keys.clone(), -keys)
    cache.reorder(torch.tensor([2, 2, 0]))
    assert cache[1].keys[:, 0, 0, 0].tolist() == [2.0, 2.0, 0.0]
    assert cache[0].values[:, 0, 0, 0].tolist() == [-2.0, -2.0, 0.0]


def test_bad_beam_options_are_named():
    model = tiny_gpt()
    prompt = torch.tensor([[1]])
    for kwargs, name in (({"num_beams": 0}, "num_beams"), ({"num_beams": 2, "early_stopping": "soon"},
                                                           "early_stopping"),
                         ({"num_beams": 2, "length_penalty": "long"}, "length_penalty")):
        with pytest.raises(ValueError, match=name):
            minitx.generate(model, prompt, 2, temperature=0, **kwargs)
    with pytest.raises(ValueError, match="max_new_tokens"):
        minitx.generate(model, prompt, 8, temperature=0, num_beams=2)

"""MLM masking (mlm.2)-(mlm.3) by chi-square tests with stated critical values, plus exact checks; batches as a pure
function of (seed, step, rank) with disjoint rank shards; probe sets; streaming batches from text lines."""

import pytest
import torch

from minitx.data.mlm import mask_tokens, mlm_batch, probe_batches, stream_mlm_batches
from minitx.data.synthetic import KINDS, SyntheticLanguage, kind_id
from minitx.tokenizers.wordpiece import WordPieceTokenizer

# Upper critical values of the chi-square distribution at p = 0.001 (standard tables).
CHI2_CRIT_001 = {1: 10.828, 2: 13.816, 19: 43.820}
V, MASK = 25, 4  # ids 0..4 special, 20 ordinary ids


def chi_square(observed, probabilities):
    n = sum(observed)
    return sum((o - n * p) ** 2 / (n * p) for o, p in zip(observed, probabilities))


@pytest.fixture(scope="module")
def tokenizer_and_sentences():
    lang = SyntheticLanguage(0)
    sentences = lang.sentences(400)
    return WordPieceTokenizer.train([s.text for s in sentences], vocab_size=1000), sentences


def random_batch(b=400, n=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, V, (b, n), generator=g)
    special = torch.zeros_like(ids)
    lengths = torch.randint(2, n + 1, (b,), generator=g)
    for i, m in enumerate(lengths.tolist()):  # [CLS] ... [SEP] then padding, as encode_batch lays it out
        ids[i, 0], ids[i, m - 1], ids[i, m:] = 2, 3, 0
        special[i, 0], special[i, m - 1:] = 1, 1
    return ids, special


def test_selection_rate_is_15_percent_mlm_2():
    ids, special = random_batch()
    _, labels = mask_tokens(ids, special, V, MASK, generator=torch.Generator().manual_seed(1))
    candidates = int((special == 0).sum())
    selected = int((labels != -100).sum())
    assert candidates > 20_000
    assert chi_square([selected, candidates - selected], [0.15, 0.85]) < CHI2_CRIT_001[1]


def test_80_10_10_among_selected_mlm_3():
    ids, special = random_batch()
    inputs, labels = mask_tokens(ids, special, V, MASK, generator=torch.Generator().manual_seed(2))
    sel = labels != -100
    masked = int((inputs[sel] == MASK).sum())
    unchanged = int((inputs[sel] == ids[sel]).sum())
    other = int(sel.sum()) - masked - unchanged
    # A random replacement equal to the original counts as unchanged: P = 0.1 + 0.1 / 20.
    probs = [0.8, 0.1 * (1 - 1 / 20), 0.1 + 0.1 / 20]
    assert chi_square([masked, other, unchanged], probs) < CHI2_CRIT_001[2]
    random_ids = inputs[sel & (inputs != MASK) & (inputs != ids)]
    assert random_ids.min() >= 5  # replacements are never special ids
    # Replacements are uniform over the 20 ordinary ids. Dropping draws equal to the original keeps them uniform
    # here because the originals are uniform too, so a 19-dof chi-square applies.
    replaced = torch.bincount(random_ids, minlength=V)[5:].tolist()
    assert chi_square(replaced, [1 / 20] * 20) < CHI2_CRIT_001[19]


def test_specials_and_padding_are_never_selected_and_input_untouched():
    ids, special = random_batch(b=50)
    original = ids.clone()
    inputs, labels = mask_tokens(ids, special, V, MASK, mlm_probability=1.0,
                                 generator=torch.Generator().manual_seed(3))
    assert torch.equal(ids, original)  # the caller's tensor is not modified
    assert torch.equal(labels != -100, special == 0)  # p = 1 selects exactly the ordinary tokens
    assert torch.equal(labels[labels != -100], ids[labels != -100])
    assert torch.equal(inputs[special == 1], ids[special == 1])
    # The pad id is excluded even if a caller forgets to mark padding as special.
    _, labels = mask_tokens(ids, torch.zeros_like(special), V, MASK, mlm_probability=1.0)
    assert not (labels[ids == 0] != -100).any()


def test_unselected_positions_keep_their_ids_and_seed_determines_everything():
    ids, special = random_batch(b=60)
    a = mask_tokens(ids, special, V, MASK, generator=torch.Generator().manual_seed(7))
    b = mask_tokens(ids, special, V, MASK, generator=torch.Generator().manual_seed(7))
    c = mask_tokens(ids, special, V, MASK, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    assert torch.equal(a[0][a[1] == -100], ids[a[1] == -100])


def test_whole_word_masking_selects_words_together():
    g = torch.Generator().manual_seed(0)
    b, n = 300, 64
    ids = torch.randint(5, V, (b, n), generator=g)
    word_ids = (torch.arange(n) // 3).repeat(b, 1)  # every word has three pieces
    word_ids[:, 0] = -1
    special = (word_ids < 0).long()
    _, labels = mask_tokens(ids, special, V, MASK, generator=g, word_ids=word_ids, whole_word=True)
    sel = (labels != -100)[:, 3:63].reshape(b, 20, 3)  # (B, 60) -> (B, words, pieces)
    assert torch.equal(sel.all(-1), sel.any(-1))  # all pieces of a word, or none
    words_selected = int(sel[..., 0].sum())
    assert chi_square([words_selected, b * 20 - words_selected], [0.15, 0.85]) < CHI2_CRIT_001[1]
    with pytest.raises(ValueError, match="word_ids"):
        mask_tokens(ids, special, V, MASK, whole_word=True)


def test_whole_word_masking_keeps_pair_segments_apart(tokenizer_and_sentences):
    tok, _ = tokenizer_and_sentences
    batch = tok.encode_batch(["the dog"] * 400, pairs=["the cat"] * 400)  # word ids 0, 1 in both segments
    _, labels = mask_tokens(batch["input_ids"], batch["special_tokens_mask"], tok.vocab_size, tok.mask_id,
                            generator=torch.Generator().manual_seed(0), word_ids=batch["word_ids"],
                            whole_word=True)
    sel = labels != -100
    assert not torch.equal(sel[:, 1], sel[:, 4])  # "the" of segment A and of segment B drawn independently


def test_bad_arguments_are_named():
    ids, special = random_batch(b=2)
    with pytest.raises(TypeError, match="input_ids"):
        mask_tokens(ids.float(), special, V, MASK)
    with pytest.raises(ValueError, match="special_tokens_mask"):
        mask_tokens(ids, special[:, :3], V, MASK)
    with pytest.raises(ValueError, match="mlm_probability"):
        mask_tokens(ids, special, V, MASK, mlm_probability=1.5)


def test_mlm_batch_is_a_pure_function_of_seed_step_rank(tokenizer_and_sentences):
    tok, sentences = tokenizer_and_sentences
    a = mlm_batch(sentences, tok, 8, step=5, seed=1, rank=1, world_size=2)
    b = mlm_batch(sentences, tok, 8, step=5, seed=1, rank=1, world_size=2)
    assert set(a) >= {"input_ids", "attention_mask", "token_type_ids", "labels", "determined_kind"}
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = mlm_batch(sentences, tok, 8, step=6, seed=1, rank=1, world_size=2)
    d = mlm_batch(sentences, tok, 8, step=5, seed=2, rank=1, world_size=2)
    assert not torch.equal(a["labels"], c["labels"]) and not torch.equal(a["labels"], d["labels"])


def test_ranks_read_disjoint_shards_covering_each_epoch(tokenizer_and_sentences):
    tok, _ = tokenizer_and_sentences
    examples = [f"the {w} is good" for w in ("dog", "cat", "king", "queen", "boy", "girl", "poet", "film",
                                             "man", "woman", "city", "book")]

    def texts(rank, steps):
        out = []
        for step in steps:
            batch = mlm_batch(examples, tok, 3, step=step, seed=0, rank=rank, world_size=2, mlm_probability=0.0)
            assert (batch["labels"] == -100).all()
            out += [tok.decode(row) for row in batch["input_ids"]]
        return out

    r0, r1 = texts(0, [0, 1]), texts(1, [0, 1])  # one epoch: 2 steps x 3 = each rank's 6 examples
    assert sorted(r0 + r1) == sorted(examples)
    assert sorted(texts(0, [2, 3])) == sorted(r0) and texts(0, [2, 3]) != r0  # next epoch: reshuffled


def test_determined_kind_marks_the_determined_words(tokenizer_and_sentences):
    tok, sentences = tokenizer_and_sentences
    batch = mlm_batch(sentences, tok, 32, step=0, seed=0, mlm_probability=0.0)
    expected_words = {kind_id("agreement"): {"is", "are"}, kind_id("bracket"): {")", "]", "}"},
                      kind_id("phrase"): {"of", "to", "from", "as"}}
    marked = batch["determined_kind"] > 0
    assert marked.sum(1).min() >= 1  # every sentence has its copula
    for code, words in expected_words.items():
        ids = batch["input_ids"][batch["determined_kind"] == code]
        assert {tok.vocab[i] for i in ids.tolist()} <= words


def test_probes_mask_exactly_one_determined_word(tokenizer_and_sentences):
    tok, _ = tokenizer_and_sentences
    held_out = SyntheticLanguage(0).sentences(40, "validation")
    batches = list(probe_batches(held_out, tok, batch_size=16))
    rows = [(b, i) for b in batches for i in range(b["input_ids"].shape[0])]
    assert len(rows) == sum(len(s.determined) for s in held_out)
    kinds_seen = set()
    for b, i in rows:
        probed = b["labels"][i] != -100
        assert probed.sum() == 1  # corpus words are single tokens
        assert (b["input_ids"][i] == tok.mask_id).sum() == 1 and b["input_ids"][i][probed] == tok.mask_id
        assert torch.equal(b["determined_kind"][i] > 0, probed)
        kinds_seen.add(KINDS[int(b["determined_kind"][i][probed]) - 1])
    assert kinds_seen == set(KINDS)
    first = held_out[0]
    word, kind = sorted(first.determined.items())[0]
    assert tok.vocab[int(batches[0]["labels"][0][word + 1])] == first.words[word]  # +1 for [CLS]


def test_stream_batches_resume_exactly_and_split_lines_by_rank(tokenizer_and_sentences):
    tok, sentences = tokenizer_and_sentences
    lines = [s.text for s in sentences[:40]]
    full = list(stream_mlm_batches(iter(lines), tok, 4, seed=3, rank=1, world_size=2))
    resumed = list(stream_mlm_batches(iter(lines), tok, 4, seed=3, rank=1, world_size=2, start_step=2))
    assert len(full) == 5 and len(resumed) == 3
    assert all(torch.equal(x[k], y[k]) for x, y in zip(full[2:], resumed) for k in x)
    clean = list(stream_mlm_batches(iter(lines), tok, 4, seed=3, rank=1, world_size=2, mlm_probability=0.0))
    assert [tok.decode(r) for b in clean for r in b["input_ids"]] == lines[1::2]
    uneven = list(stream_mlm_batches(iter(lines + ["a b", "c d"]), tok, 4, seed=3, rank=1, world_size=2))
    assert len(uneven) == 5  # rank 1's 21st line would start a short batch: dropped, as documented


def test_packed_encodings_are_batched_as_they_are():
    from minitx.data.text import pack_lines
    tok = WordPieceTokenizer.train(["the cat sat on the mat", "a dog ran far away"] * 4, vocab_size=80)
    blocks = list(pack_lines(["the cat sat on the mat", "a dog ran far away"] * 4, tok, max_length=8))
    batch = mlm_batch(blocks, tok, batch_size=len(blocks), step=0, seed=0, max_length=8, mlm_probability=0.5)
    assert batch["input_ids"].shape == (len(blocks), 8) and bool(batch["attention_mask"].all())
    original = torch.where(batch["labels"] == -100, batch["input_ids"], batch["labels"])  # undo the masking
    assert sorted(original.tolist()) == sorted(b.ids for b in blocks)  # the blocks, in a seeded order
    assert (batch["labels"] != -100).any()
    with pytest.raises(ValueError, match="max_length"):
        mlm_batch(blocks, tok, batch_size=2, step=0, seed=0, max_length=6)

"""The MLM head only at labelled positions (mlm.7): the same loss and gradients as the full head (mlm.1)."""

import dataclasses

import pytest
import torch

from minitx.functional import IGNORE_INDEX
from minitx.models.bert import BertConfig, BertForMaskedLM, labelled_logits


def _pair(seed=0, **extra):
    config = BertConfig(vocab_size=40, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_position=12, dropout=0.0,
                        attention_dropout=0.0, sparse_prediction=True, **extra)
    torch.manual_seed(seed)
    sparse = BertForMaskedLM(config)
    full = BertForMaskedLM(dataclasses.replace(config, sparse_prediction=False))
    full.load_state_dict(sparse.state_dict())
    return sparse, full


def _batch(seed=0, b=3, n=12):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 40, (b, n), generator=gen)
    mask = torch.ones(b, n, dtype=torch.long)
    mask[1, 8:] = 0
    labels = torch.where(torch.rand(b, n, generator=gen) < 0.2, ids, torch.full_like(ids, IGNORE_INDEX))
    labels[0, 0] = ids[0, 0]
    return ids, mask, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sparse_head_gives_the_full_heads_loss_and_gradients(seed):
    """(mlm.7) = (mlm.1): same loss, same gradient for every parameter (the decoder tied to the embedding too)."""
    sparse, full = _pair(seed)
    ids, mask, labels = _batch(seed)
    a, b = sparse(ids, mask, labels=labels), full(ids, mask, labels=labels)
    torch.testing.assert_close(a.loss, b.loss, atol=1e-6, rtol=1e-6)
    a.loss.backward()
    b.loss.backward()
    _assert_same_grads(sparse, full)


def _assert_same_grads(model, other):
    """Every parameter's gradient in `model` equals the same-named one in `other`."""
    grads = dict(other.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name].grad, atol=1e-6, rtol=1e-5, msg=name)


def test_sparse_logits_are_the_full_logits_at_the_labelled_positions():
    sparse, full = _pair()
    ids, mask, labels = _batch()
    out, ref = sparse(ids, mask, labels=labels), full(ids, mask, labels=labels)
    selected = labels != IGNORE_INDEX
    assert out.sparse_logits.shape == (int(selected.sum()), 40) and ref.logits.shape == (3, 12, 40)
    assert out.logits is None and ref.sparse_logits is None  # (K, V) rows never pass for (B, N, V) logits
    assert torch.equal(out.prediction_mask, selected) and ref.prediction_mask is None
    torch.testing.assert_close(out.sparse_logits, ref.logits[selected], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(labelled_logits(out, labels), labelled_logits(ref, labels), atol=1e-6, rtol=1e-6)
    assert out.labelled_logits(labels) is out.sparse_logits


def test_without_labels_the_logits_are_full():
    sparse, _ = _pair()
    ids, mask, _ = _batch()
    out = sparse(ids, mask)
    assert out.logits.shape == (3, 12, 40) and out.loss is None and out.prediction_mask is None


def test_sparse_prediction_is_an_explicit_choice_that_survives_the_config_round_trip():
    """Off by default (logits (B, N, V) with labels, as Hugging Face's; issue 19 row 25); pretraining sets it."""
    assert not BertConfig().sparse_prediction
    config = BertConfig(sparse_prediction=True)
    assert BertConfig.from_dict(config.to_dict()) == config and BertConfig.from_dict(config.to_dict()).sparse_prediction


# (mlm.8): the last block only at the labelled rows


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("backend", ["math", "sdpa", "flash"])
def test_last_block_at_labelled_rows_gives_the_full_loss_and_gradients(norm_first, backend):
    """(mlm.8) = (mlm.7) = (mlm.1): the three forms of the step agree on loss and every gradient."""
    torch.manual_seed(3)
    base = BertConfig(vocab_size=40, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_position=12, dropout=0.0,
                      attention_dropout=0.0, norm_first=norm_first, attention_backend=backend, sparse_prediction=True)
    rows = BertForMaskedLM(base)
    head_only = BertForMaskedLM(dataclasses.replace(base, sparse_last_block=False))
    full = BertForMaskedLM(dataclasses.replace(base, sparse_prediction=False))
    head_only.load_state_dict(rows.state_dict())
    full.load_state_dict(rows.state_dict())
    ids, mask, labels = _batch(4)
    labels[2] = IGNORE_INDEX  # a sequence with nothing to predict: all its R rows are padding
    outs = [m(ids, mask, labels=labels) for m in (rows, head_only, full)]
    for out in outs:
        out.loss.backward()
    selected = labels != IGNORE_INDEX
    assert outs[0].hidden.shape == (int(selected.sum()), 16)  # only the rows the head reads
    torch.testing.assert_close(outs[0].hidden, outs[2].hidden[selected], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(outs[0].sparse_logits, outs[1].sparse_logits, atol=1e-6, rtol=1e-5)
    for other, out in ((head_only, outs[1]), (full, outs[2])):
        torch.testing.assert_close(outs[0].loss, out.loss, atol=1e-6, rtol=1e-6)
        _assert_same_grads(rows, other)


def test_last_block_rows_fall_back_where_they_do_not_apply():
    """No labelled position at all, or a next-sentence head (it reads [CLS]): the full last block runs."""
    sparse, full = _pair()
    ids, mask, labels = _batch()
    nothing = torch.full_like(labels, IGNORE_INDEX)
    assert sparse(ids, mask, labels=nothing).hidden.shape == (3, 12, 16)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=40, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_position=12, dropout=0.0,
                        attention_dropout=0.0, sparse_prediction=True)
    nsp = BertForMaskedLM(config, next_sentence=True)
    out = nsp(ids, mask, labels=labels, next_sentence_label=torch.tensor([0, 1, 0]))
    assert out.hidden.shape == (3, 12, 16) and torch.isfinite(out.loss)


def test_encoder_block_rows_equal_the_full_blocks_rows():
    from minitx.nn.block import standard_block
    torch.manual_seed(0)
    x = torch.randn(2, 7, 16)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 5:] = False
    rows = torch.tensor([[6, 0, 3], [4, 4, 1]])  # any order, repeats allowed
    for norm_first in (False, True):
        block = standard_block(16, 2, 32, dropout=0.0, norm_first=norm_first).eval()
        want = block(x, key_padding_mask=mask).gather(1, rows[..., None].expand(-1, -1, 16))
        torch.testing.assert_close(block(x, key_padding_mask=mask, rows=rows), want, atol=1e-6, rtol=1e-5)
        with pytest.raises(ValueError, match="rows"):
            block(x, rows=rows.int())
        with pytest.raises(ValueError, match="rows"):
            block(x, rows=rows[:1])
        with pytest.raises(ValueError, match="bidirectional"):
            block(x, rows=rows, is_causal=True)


def test_sparse_last_block_is_on_by_default_and_old_configs_get_it():
    config = BertConfig()
    assert config.sparse_last_block
    old = {k: v for k, v in config.to_dict().items() if k != "sparse_last_block"}
    assert BertConfig.from_dict(old).sparse_last_block

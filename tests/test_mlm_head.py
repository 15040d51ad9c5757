"""The MLM head only at labelled positions (mlm.7): the same loss and gradients as the full head (mlm.1)."""

import dataclasses

import pytest
import torch

from minitx.model import IGNORE_INDEX, BertConfig, BertForMaskedLM, labelled_logits


def _pair(seed=0, **extra):
    config = BertConfig(vocab_size=40, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_position=12, dropout=0.0,
                        attention_dropout=0.0, **extra)
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
    grads_full = dict(full.named_parameters())
    for name, p in sparse.named_parameters():
        torch.testing.assert_close(p.grad, grads_full[name].grad, atol=1e-6, rtol=1e-5, msg=name)


def test_sparse_logits_are_the_full_logits_at_the_labelled_positions():
    sparse, full = _pair()
    ids, mask, labels = _batch()
    out, ref = sparse(ids, mask, labels=labels), full(ids, mask, labels=labels)
    selected = labels != IGNORE_INDEX
    assert out.logits.shape == (int(selected.sum()), 40) and ref.logits.shape == (3, 12, 40)
    assert torch.equal(out.prediction_mask, selected) and ref.prediction_mask is None
    torch.testing.assert_close(out.logits, ref.logits[selected], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(labelled_logits(out, labels), labelled_logits(ref, labels), atol=1e-6, rtol=1e-6)
    assert out.labelled_logits(labels) is out.logits


def test_without_labels_the_logits_are_full():
    sparse, _ = _pair()
    ids, mask, _ = _batch()
    out = sparse(ids, mask)
    assert out.logits.shape == (3, 12, 40) and out.loss is None and out.prediction_mask is None


def test_sparse_prediction_is_on_by_default_and_survives_the_config_round_trip():
    config = BertConfig()
    assert config.sparse_prediction
    assert BertConfig.from_dict(config.to_dict()) == config
    old = {k: v for k, v in config.to_dict().items() if k != "sparse_prediction"}  # a checkpoint from before
    assert BertConfig.from_dict(old).sparse_prediction

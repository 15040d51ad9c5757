"""The BERT-style model: tied MLM decoder, the loss it documents (mlm.1), padding, backends, heads, errors."""

import pytest
import torch
import torch.nn.functional as F

from minitx.model import BertConfig, BertForMaskedLM, BertForSequenceClassification, BertModel


def tiny(**overrides):
    values = dict(vocab_size=30, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_position=12,
                  dropout=0.0, attention_dropout=0.0)
    values.update(overrides)
    return BertConfig(**values)


def batch(seed=0, vocab=30):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (3, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = 0
    return ids, mask


def test_decoder_is_tied_to_token_embedding():
    torch.manual_seed(0)
    model = BertForMaskedLM(tiny())
    ids, mask = batch()
    logits = model(ids, mask).logits
    hidden = model(ids, mask).hidden
    head = model.mlm_head
    h = head.norm(F.gelu(head.dense(hidden)))
    torch.testing.assert_close(logits, h @ model.bert.embeddings.token.weight.T + head.bias)
    keys = model.state_dict().keys()
    assert sum("embeddings.token.weight" in k for k in keys) == 1, "the tied matrix is stored once"


def test_mlm_loss_is_cross_entropy_over_labelled_positions():  # (mlm.1)
    torch.manual_seed(0)
    model = BertForMaskedLM(tiny())
    ids, mask = batch()
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[1, 5], labels[2, 1] = 7, 11, 13
    out = model(ids, mask, labels=labels)
    picked = torch.stack([out.logits[0, 2], out.logits[1, 5], out.logits[2, 1]])
    manual = -torch.log_softmax(picked, -1)[torch.arange(3), torch.tensor([7, 11, 13])].mean()
    torch.testing.assert_close(out.loss, manual)


def test_padding_contents_do_not_change_real_tokens():
    torch.manual_seed(0)
    model = BertForMaskedLM(tiny()).eval()
    ids, mask = batch()
    other = ids.clone()
    other[mask == 0] = 9  # different junk in padded slots
    a, b = model(ids, mask).logits, model(other, mask).logits
    real = mask.bool()
    torch.testing.assert_close(a[real], b[real])
    assert not torch.allclose(model(other).logits[real], a[real]), "without the mask, padding would leak"


def test_backends_agree_through_the_model():
    torch.manual_seed(0)
    model = BertForMaskedLM(tiny()).eval()
    ids, mask = batch(1)
    math_logits = model(ids, mask).logits
    model.bert.set_attention_backend("sdpa")
    torch.testing.assert_close(model(ids, mask).logits, math_logits, atol=1e-5, rtol=1e-5)


def test_pre_ln_has_a_final_norm_and_differs_from_post_ln():
    torch.manual_seed(0)
    post = BertModel(tiny())
    torch.manual_seed(0)
    pre = BertModel(tiny(norm_first=True))
    ids, mask = batch()
    assert pre.final_norm is not None and post.final_norm is None
    out = pre(ids, mask)
    torch.testing.assert_close(out.mean(-1), torch.zeros(out.shape[:2]), atol=1e-5, rtol=0)
    assert not torch.allclose(out, post(ids, mask))


def test_classifier_starts_from_the_pretrained_encoder():
    torch.manual_seed(0)
    mlm = BertForMaskedLM(tiny())
    clf = BertForSequenceClassification.from_pretrained_mlm(mlm, num_labels=3).eval()
    ids, mask = batch()
    torch.testing.assert_close(clf.bert(ids, mask), mlm.eval().bert(ids, mask))
    out = clf(ids, mask, labels=torch.tensor([0, 2, 1]))
    assert out.logits.shape == (3, 3)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, torch.tensor([0, 2, 1])))


def test_next_sentence_head_adds_its_loss():
    torch.manual_seed(0)
    model = BertForMaskedLM(tiny(), next_sentence=True)
    ids, mask = batch()
    labels = torch.full_like(ids, -100)
    labels[:, 1] = 6
    nsp = torch.tensor([0, 1, 1])
    out = model(ids, mask, labels=labels, next_sentence_label=nsp)
    mlm_only = model(ids, mask, labels=labels).loss
    torch.testing.assert_close(out.loss, mlm_only + F.cross_entropy(out.next_sentence_logits, nsp))


@pytest.mark.parametrize("field,value,match", [
    ("d_model", 31, "d_model"), ("n_layers", 0, "n_layers"), ("dropout", 1.5, "dropout"),
    ("attention_backend", "nope", "attention_backend")])
def test_bad_config_names_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        tiny(**{field: value})


def test_bad_inputs_name_the_argument():
    model = BertForMaskedLM(tiny())
    ids, mask = batch()
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, mask[:, :4])
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.zeros(2, 20, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        model(ids, mask, labels=ids[:, :3])

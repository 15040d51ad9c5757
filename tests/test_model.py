"""The BERT-style model (docs/math/bert.md): embeddings, stack, tied MLM decoder, its loss (mlm.1), heads, errors."""

import pytest
import torch
import torch.nn.functional as F

from minitx.models.bert import BertConfig, BertForMaskedLM, BertForSequenceClassification, BertModel


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
    """(bert.3) = (mlm.5): logits = LN(GELU(W_t h + b_t)) E^T + b_dec, with E the token embedding itself."""
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


def _randomize(model):
    """Move every parameter off its init (LayerNorm gains of 1, zero biases) so each term of a formula shows."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def test_embeddings_are_the_normalized_sum_of_three_tables():
    """(bert.1) in eval mode (no dropout): LN(E_tok[t_i] + E_seg[s_i] + E_pos[i])."""
    torch.manual_seed(0)
    emb = _randomize(BertModel(tiny())).embeddings.eval()
    ids, _ = batch()
    types = (torch.arange(ids.shape[1]) >= 4).long().expand_as(ids)
    total = emb.token.weight[ids] + emb.segment.weight[types] + emb.position.weight[: ids.shape[1]]
    expected = F.layer_norm(total, (16,), emb.norm.weight, emb.norm.bias, eps=1e-12)
    torch.testing.assert_close(emb(ids, types), expected)


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_is_the_blocks_in_order_on_the_embeddings(norm_first):
    """(bert.2): h0 = e, h_l = Block_l(h_{l-1}, key mask), plus the final LayerNorm of a pre-LN stack."""
    torch.manual_seed(0)
    model = _randomize(BertModel(tiny(norm_first=norm_first))).eval()
    ids, mask = batch()
    h = model.embeddings(ids)
    for block in model.blocks:
        h = block(h, key_padding_mask=mask.bool())
    if norm_first:
        h = model.final_norm(h)
    torch.testing.assert_close(model(ids, mask), h)
    swapped = [model.blocks[1], model.blocks[0]]  # the order matters, so the check above can fail
    h2 = model.embeddings(ids)
    for block in swapped:
        h2 = block(h2, key_padding_mask=mask.bool())
    assert not torch.allclose(model(ids, mask), model.final_norm(h2) if norm_first else h2)


@pytest.mark.parametrize("use_pooler", [True, False])
def test_classifier_logits_are_the_head_on_the_pooled_cls_vector(use_pooler):
    """(bert.4) pool = tanh(W_p h_0 + b_p), (bert.5) logits = W_c pool + b_c (eval: no dropout); or the raw h_0."""
    torch.manual_seed(0)
    model = _randomize(BertForSequenceClassification(tiny(), num_labels=3, use_pooler=use_pooler)).eval()
    ids, mask = batch()
    cls = model.bert(ids, mask)[:, 0]  # (B, N, C) -> (B, C): the [CLS] position
    pooled = torch.tanh(cls @ model.pooler.dense.weight.T + model.pooler.dense.bias) if use_pooler else cls
    expected = pooled @ model.classifier.weight.T + model.classifier.bias
    torch.testing.assert_close(model(ids, mask).logits, expected)


def test_mlm_loss_is_cross_entropy_over_labelled_positions():  # (mlm.1)
    torch.manual_seed(0)
    model = BertForMaskedLM(tiny())
    ids, mask = batch()
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[1, 5], labels[2, 1] = 7, 11, 13
    out = model(ids, mask, labels=labels)
    picked = out.labelled_logits(labels)  # (3, V): the labelled positions in row-major order
    torch.testing.assert_close(picked, model(ids, mask).logits[labels != -100])
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
    with pytest.raises(ValueError, match="backend"):
        model.bert.set_attention_backend("nope")
    assert model.config.attention_backend == "sdpa"  # a refused switch changes nothing
    assert all(b.attention.backend == "sdpa" for b in model.bert.blocks)


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
    ("attention_backend", "nope", "attention_backend"),
    ("n_heads", True, "n_heads")])  # a bool is an int to Python, but never a head count
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


def test_an_all_ones_attention_mask_is_dropped_at_the_door():
    """models.inputs.key_padding_mask: no padding anywhere -> None (no layer builds a mask), and the model's
    output equals the one without attention_mask; real padding is kept."""
    from minitx.models.inputs import key_padding_mask
    assert key_padding_mask(torch.ones(2, 5, dtype=torch.long), (2, 5)) is None
    padded = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert torch.equal(key_padding_mask(padded, (2, 3)), padded.bool())
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=50, d_model=16, n_heads=2, d_ff=32, n_layers=1)).eval()
    ids = torch.randint(1, 50, (2, 6))
    torch.testing.assert_close(model(ids, attention_mask=torch.ones_like(ids)).logits, model(ids).logits,
                               atol=0, rtol=0)

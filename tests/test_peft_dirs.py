"""PEFT adapter directories both ways (minitx.interop.peft_dirs): a minitx LoRA adapter loads in
`peft.PeftModel.from_pretrained` with equal outputs, and a PEFT adapter loads into minitx with equal outputs.
Tiny random models, built offline."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from minitx.cli import main  # noqa: E402
from minitx.recipes.finetune.inference import load_finetuned  # noqa: E402
from minitx.interop.bert import from_hf_bert  # noqa: E402
from minitx.peft.lora import apply_lora, LoRALinear  # noqa: E402
from minitx.interop.peft_dirs import load_peft_adapter, read_peft_adapter, save_peft_adapter  # noqa: E402
from test_hf_dirs import batch, finetune_args, hf_dir, hf_mlm  # noqa: E402,F401 (hf_dir: a fixture)


def randomize_lora(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.3)  # B = 0 would hide the update


def ids_batch(vocab, n=9):
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(1, vocab, (3, n), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return ids, mask


@pytest.mark.parametrize("targets, rslora", [(["q_proj", "v_proj"], False),
                                             (["fc_out", "k_proj"], True)])  # fc_out without out_proj
def test_a_minitx_lora_adapter_loads_in_peft_with_equal_outputs(tmp_path, targets, rslora):
    hf = hf_mlm(60)
    ours = from_hf_bert(hf).eval()
    torch.manual_seed(1)
    apply_lora(ours, targets, r=4, alpha=12, use_rslora=rslora)
    randomize_lora(ours)
    save_peft_adapter(ours, tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 12 and config["use_rslora"] is rslora
    peft_model = peft.PeftModel.from_pretrained(hf, tmp_path).eval()
    wrapped = [n for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]
    assert len(wrapped) == len(targets) * 2  # exactly the modules minitx wrapped, in both layers
    ids, mask = ids_batch(60)
    with torch.no_grad():
        expected = ours(ids, mask).logits
        got = peft_model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # and the adapter matters: without it the logits differ
        with peft_model.disable_adapter():
            assert (peft_model(input_ids=ids, attention_mask=mask).logits - expected).abs().max() > 1e-3


@pytest.mark.parametrize("rslora", [False, True])
def test_a_peft_adapter_loads_into_minitx_with_equal_outputs(tmp_path, rslora):
    hf = hf_mlm(60)
    ours = from_hf_bert(hf).eval()  # converted before PEFT wraps the HF model in place
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value", "intermediate.dense"],
                             lora_dropout=0.1, use_rslora=rslora)
    peft_model = peft.get_peft_model(hf, config)
    randomize_peft(peft_model)
    peft_model.save_pretrained(tmp_path)
    names = load_peft_adapter(ours, tmp_path)
    assert len(names) == 6 and all(isinstance(ours.get_submodule(n), LoRALinear) for n in names)
    ours.eval()
    peft_model.eval()
    ids, mask = ids_batch(60)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, mask).logits, peft_model(input_ids=ids, attention_mask=mask).logits,
                                   atol=1e-5, rtol=1e-5)


def randomize_peft(peft_model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def test_minitx_finetune_lora_run_exports_a_peft_adapter_with_equal_outputs(hf_dir, tmp_path):
    """HF dir -> minitx finetune --method lora --use-pooler -> minitx export --peft -> PEFT on the HF dir's
    own BertForSequenceClassification: the same logits as minitx's fine-tuned classifier."""
    path, _ = hf_dir
    assert main(finetune_args(path, tmp_path / "run", "--method", "lora", "--use-pooler", "--lr", "0.05")) == 0
    assert main(["export", "--peft", str(tmp_path / "run"), str(tmp_path / "adapter")]) == 0
    config, state = read_peft_adapter(tmp_path / "adapter")
    assert config["task_type"] == "SEQ_CLS" and config["base_model_name_or_path"] == str(path.resolve())
    assert "base_model.model.classifier.weight" in state
    lora_b = [v for k, v in state.items() if k.endswith("lora_B.weight")]
    assert len(lora_b) == 12 and all(v.abs().max() > 0 for v in lora_b)  # it trained: every B moved off zero
    ours, tokenizer, _ = load_finetuned(tmp_path / "run")  # merged (lora.6): the reference
    base = transformers.BertForSequenceClassification.from_pretrained(path, num_labels=2,
                                                                       attn_implementation="eager")
    peft_model = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    b = batch(tokenizer)
    with torch.no_grad():
        expected = ours(b["input_ids"], b["attention_mask"], b["token_type_ids"]).logits
        got = peft_model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                         token_type_ids=b["token_type_ids"]).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("option, value", [("use_dora", True), ("fan_in_fan_out", True), ("bias", "all"),
                                           ("rank_pattern", {"query": 2}), ("peft_type", "IA3"),
                                           ("use_bdlora", {"blocks": 2}), ("kasa_config", {"k": 1})])
def test_adapter_options_minitx_cannot_represent_are_refused_by_name(tmp_path, option, value):
    hf = hf_mlm(60)
    ours = from_hf_bert(hf)
    apply_lora(ours, ["q_proj"], r=2, alpha=4)
    save_peft_adapter(ours, tmp_path)
    read_peft_adapter(tmp_path)  # fine as written
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**config, option: value}))
    with pytest.raises(ValueError, match=f"adapter_config.{option}"):
        load_peft_adapter(from_hf_bert(hf), tmp_path)


def test_a_merged_model_is_refused(tmp_path):
    from minitx.peft.lora import merge_lora
    ours = from_hf_bert(hf_mlm(60))
    apply_lora(ours, ["q_proj"], r=2, alpha=4)
    for m in ours.modules():
        if isinstance(m, LoRALinear):
            m.merge()
    with pytest.raises(ValueError, match="already merged"):
        save_peft_adapter(ours, tmp_path)
    assert merge_lora(ours) is ours

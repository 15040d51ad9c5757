"""Fine-tuning recipe: every method runs and writes its run directory, PEFT methods train only what they should,
user data is checked row by row, early stopping keeps the best weights, and `minitx classify` agrees with the
in-memory model. A tiny model pretrained once per module keeps the whole file to seconds."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file

from minitx import cli
from minitx.recipes.finetune.config import DEFAULT_LR, FinetuneConfig
from minitx.recipes.finetune.data import encode_split, load_splits, read_labelled_file
from minitx.recipes.finetune.inference import classify_main, load_finetuned, predict
from minitx.recipes.finetune.recipe import BestWeights, evaluate, run_finetuning, starting_point
from minitx.recipes.pretrain.config import PretrainConfig
from minitx.recipes.pretrain.recipe import run_pretraining

TINY = dict(max_steps=8, warmup_steps=2, eval_every=4, n_train_labels=32, n_validation=24, n_test=40,
            batch_size=8, progress=False)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    run_pretraining(PretrainConfig(out_dir=str(out), max_steps=4, warmup_steps=1, train_sentences=300,
                                   eval_sentences=16, vocab_size=200, d_model=16, n_heads=2, d_ff=32,
                                   batch_size=8, max_length=40, eval_every=0, progress=False))
    return out


@pytest.fixture(scope="module")
def runs(pretrained, tmp_path_factory):
    """One tiny run per method, shared by the tests that inspect them."""
    out = {}
    for method in ("full", "lora", "adapter", "bitfit"):
        config = FinetuneConfig(from_checkpoint=str(pretrained), method=method, lora_r=2, adapter_bottleneck=4,
                                out_dir=str(tmp_path_factory.mktemp(method)), patience=0, **TINY)
        out[method] = (config, run_finetuning(config))
    return out


def _original_name(name: str) -> str:
    """A wrapped Linear's `x.q_proj.base.weight` was `x.q_proj.weight` before the PEFT method wrapped it."""
    return name.replace(".base.", ".")


@pytest.mark.parametrize("method", ["full", "lora", "adapter", "bitfit"])
def test_each_method_writes_a_run_whose_reloaded_model_scores_what_the_summary_says(runs, method):
    config, result = runs[method]
    run_dir = result.paths["out_dir"]
    for name in ("checkpoint.pt", "tokenizer.json", "model_config.json", "summary.json", "metrics.jsonl"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "lora_adapter.safetensors").is_file() == (method == "lora")
    summary = json.loads((run_dir / "summary.json").read_text())
    model, tokenizer, info = load_finetuned(run_dir)
    test = load_splits(config)["test"]
    right = int((predict(model, tokenizer, test.texts).argmax(-1) == torch.tensor(test.labels)).sum())
    assert summary["test_accuracy"] == pytest.approx(right / len(test), abs=1e-12)
    trainable = sum(p.numel() for p in result.model.parameters() if p.requires_grad)
    assert summary["trainable_parameters"] == trainable
    assert summary["trainable_share"] == pytest.approx(trainable / summary["total_parameters"])
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "eval"] == [4, 8]


# Which parameters each method may train (the head always trains): names as the wrapped model has them.
ALLOWED = {
    "lora": re.compile(r".*\.(lora_A|lora_B)|classifier\..*"),
    "adapter": re.compile(r".*\.(down|up)\.(weight|bias)|.*(attention_norm|ffn_norm)\..*|classifier\..*"),
    "bitfit": re.compile(r".*\.bias|classifier\..*"),
}


@pytest.mark.parametrize("method", ["lora", "adapter", "bitfit"])
def test_peft_methods_leave_frozen_weights_byte_equal_and_train_the_rest(runs, method):
    config, result = runs[method]
    before, _ = starting_point(config)  # the same seeded starting point, rebuilt
    before = dict(before.named_parameters())
    trained = dict(result.model.named_parameters())
    changed = 0
    for name, p in trained.items():
        assert p.requires_grad == bool(ALLOWED[method].fullmatch(name)), name
        original = before.get(_original_name(name))
        if not p.requires_grad:
            assert torch.equal(p, original), f"frozen {name} changed"
        elif original is not None:
            changed += not torch.equal(p, original)
    assert changed or method != "bitfit"  # BitFit trains existing tensors; they must have moved
    assert not torch.equal(result.model.classifier.weight, before["classifier.weight"])


def test_lora_adapter_file_holds_only_the_low_rank_factors_and_the_head(runs):
    _, result = runs["lora"]
    state = load_file(str(result.paths["adapter"]))
    assert state and all(ALLOWED["lora"].fullmatch(k) for k in state)
    assert {"classifier.weight", "classifier.bias"} <= set(state)
    own = dict(result.model.named_parameters())
    assert all(torch.equal(v, own[k]) for k, v in state.items())


def test_classify_on_a_saved_lora_run_matches_the_in_memory_model(runs, capsys):
    _, result = runs["lora"]
    texts = ["the dog is happy .", "the kings are not cruel .", "the song that the poet wrote is boring ."]
    expected = predict(result.model, result.tokenizer, texts)  # unmerged LoRA, in memory
    assert classify_main([str(result.paths["out_dir"]), *texts]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(texts)
    for line, probs, text in zip(lines, expected, texts):
        name, prob, shown = line.split("\t")
        assert shown == text
        assert name == ["negative", "positive"][int(probs.argmax())]
        assert float(prob) == pytest.approx(float(probs.max()), abs=1e-4)  # merged weights: rounding only


def test_user_csv_and_jsonl_are_read(tmp_path):
    csv_file = tmp_path / "train.csv"
    csv_file.write_text('text,label\n"a, quoted text",1\nplain words,0\n', encoding="utf-8")
    jsonl_file = tmp_path / "train.jsonl"
    jsonl_file.write_text('{"text": "first", "label": 0}\n\n{"text": "second", "label": 2, "extra": 1}\n')
    csv_split = read_labelled_file(csv_file, num_labels=2)
    assert csv_split.texts == ["a, quoted text", "plain words"] and csv_split.labels == [1, 0]
    jsonl_split = read_labelled_file(jsonl_file, num_labels=3)
    assert jsonl_split.texts == ["first", "second"] and jsonl_split.labels == [0, 2]


@pytest.mark.parametrize("name, content, message", [
    ("bad.csv", "text,label\nfine,1\noops,7\n", r"row 2: label: expected an integer in \[0, 2\), got 7"),
    ("bad.csv", "text,label\nfine,1\n,0\n", r"row 2: text: expected a non-empty string"),
    ("bad.csv", "sentence,label\nfine,1\n", r"columns 'text' and 'label', got \['sentence', 'label'\]"),
    ("bad.csv", "text,label\nfine,pos\n", r"row 1: label: expected an integer .* got 'pos'"),
    ("bad.jsonl", '{"text": "a", "label": 0}\n{"text": "b"}\n', r"row 2: expected columns .* missing \['label'\]"),
    ("bad.jsonl", '{"text": "a", "label": 0}\nnot json\n', r"row 2: expected a JSON object, got invalid JSON"),
    ("bad.jsonl", '{"text": "a", "label": 1.5}\n', r"row 1: label: expected an integer"),
    ("bad.txt", "text,label\n", r"expected a \.csv or \.jsonl file"),
])
def test_bad_rows_and_missing_columns_are_rejected_by_name(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_labelled_file(path, num_labels=2, arg="train_file")


def test_user_files_fine_tune_end_to_end(pretrained, tmp_path):
    rows = [("the dog is happy .", 1), ("the cat is cruel .", 0)] * 12
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    (tmp_path / "test.csv").write_text("text,label\nthe bird is happy .,1\nthe bird is cruel .,0\n")
    config = FinetuneConfig(from_checkpoint=str(pretrained), train_file=str(tmp_path / "train.jsonl"),
                            validation_file=str(tmp_path / "train.jsonl"), test_file=str(tmp_path / "test.csv"),
                            label_names=["neg", "pos"], out_dir=str(tmp_path / "run"), method="full",
                            **{**TINY, "n_train_labels": 0})
    result = run_finetuning(config)
    assert result.summary["examples"] == {"train": 24, "validation": 24, "test": 2}
    _, _, info = load_finetuned(tmp_path / "run")
    assert info["label_names"] == ["neg", "pos"]


def test_best_weights_raise_after_patience_and_restore_the_best():
    model = torch.nn.Linear(2, 2)
    best = BestWeights(model, patience=2)
    with torch.no_grad():
        model.weight.fill_(1.0)
    assert not best.update(1, accuracy=0.5, loss=0.7)
    with torch.no_grad():
        model.weight.fill_(2.0)
    assert not best.update(2, accuracy=0.5, loss=0.6)  # same accuracy, lower loss: better
    with torch.no_grad():
        model.weight.fill_(3.0)
    assert not best.update(3, accuracy=0.4, loss=0.1)  # accuracy first: worse (1 of patience 2)
    assert best.update(4, accuracy=0.5, loss=0.6)  # a tie is not an improvement: 2 of 2, stop
    best.restore()
    assert best.best_step == 2 and torch.equal(model.weight, torch.full((2, 2), 2.0))


def test_early_stopping_ends_the_run_and_keeps_the_best_validation_weights(pretrained, tmp_path):
    config = FinetuneConfig(from_checkpoint=str(pretrained), method="full", patience=1, lr=3e-2,
                            out_dir=str(tmp_path / "run"),
                            **{**TINY, "max_steps": 60, "eval_every": 2, "warmup_steps": 20})
    result = run_finetuning(config)
    s = result.summary
    assert s["stopped_early"] and s["steps_run"] < config.max_steps
    evals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["split"] == "eval"]
    assert evals[-1]["stop"] == 1.0 and evals[-1]["step"] == s["steps_run"]
    assert all(r["stop"] == 0.0 for r in evals[:-1])
    best = max(evals, key=lambda r: (r["accuracy"], -r["loss"]))
    assert s["best_step"] == best["step"] and s["best_validation_accuracy"] == best["accuracy"]
    assert s["best_step"] != s["steps_run"]  # the kept weights are not simply the last ones
    validation = encode_split(load_splits(config)["validation"], result.tokenizer, 40)
    again = evaluate(result.model, validation)
    assert again["accuracy"] == best["accuracy"] and again["loss"] == pytest.approx(best["loss"], rel=1e-5)


def test_config_errors_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="method: expected one of"):
        FinetuneConfig(method="prefix")
    with pytest.raises(ValueError, match=r"from_checkpoint: .*\(no such path\)"):
        FinetuneConfig(from_checkpoint=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="label_names: expected 2 names"):
        FinetuneConfig(label_names=["a", "b", "c"])
    assert FinetuneConfig(method="full").lr == DEFAULT_LR["full"] and FinetuneConfig(method="lora", lr=1e-2).lr == 1e-2


def test_finetune_help_shows_from_and_method(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["finetune", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--from FROM_CHECKPOINT" in text and "--method {full,lora,adapter,bitfit}" in text


def test_demo_fast_pretrains_then_lora_fine_tunes_and_reports(tmp_path, capsys):
    from minitx.recipes.finetune.demo import demo_main
    assert demo_main(["--fast", "--out-dir", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "finetune" / "summary.json").read_text())
    assert summary["method"] == "lora" and summary["from"] == str(tmp_path / "pretrain")
    assert f"test accuracy {summary['test_accuracy']:.2%}" in out  # the printed number is the run's own
    assert (tmp_path / "pretrain" / "checkpoint.pt").is_file() and "[MASK] 1 of 1" in out

"""`minitx explain RUN "text"`: figures of a pretrain run and of a train-lm run, written as PNG; errors in one line."""

import json

import pytest
import torch

from minitx.cli import main
from minitx.models.bert import BertConfig, BertForMaskedLM
from minitx.models.gpt import GPT, GPTConfig
from minitx.recipes.explain import explain
from minitx.tokenizers.char import CharTokenizer
from minitx.tokenizers.wordpiece import SPECIAL_TOKENS, WordPieceTokenizer
from minitx.training.checkpoint import save_checkpoint

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run directories as train-lm and pretrain write them (checkpoint.pt with the model config and the tokenizer
    in its extra_state), holding tiny random models: explain reads them the way it reads trained ones."""
    root = tmp_path_factory.mktemp("explain")
    torch.manual_seed(0)
    chars = CharTokenizer.train("To be, or not to be, that is the question:\n")
    gpt = GPT(GPTConfig(vocab_size=chars.vocab_size, max_position=16, d_model=16, n_layers=2, n_heads=2))
    save_checkpoint(root / "lm" / "checkpoint.pt", model=gpt, step=1,
                    extra_state={"model_config": gpt.config.to_dict(), "tokenizer": chars.state()})
    words = WordPieceTokenizer(list(SPECIAL_TOKENS) + "the dogs dog near tree is are kind .".split())
    bert = BertForMaskedLM(BertConfig(vocab_size=words.vocab_size, d_model=16, n_layers=2, n_heads=2, d_ff=32,
                                      max_position=16))
    tokenizer = {"vocab": list(words.vocab), "lowercase": True, "max_input_chars_per_word": 100}
    save_checkpoint(root / "mlm" / "checkpoint.pt", model=bert, step=1,
                    extra_state={"model_config": bert.config.to_dict(), "tokenizer": tokenizer})
    return root


def test_explain_a_gpt_run_writes_its_figures(runs, capsys):
    assert main(["explain", str(runs / "lm"), "To be, or not"]) == 0
    out = runs / "lm" / "explain"
    for name in ("attention", "rollout", "logit_lens"):
        assert (out / f"{name}.png").read_bytes()[:8] == PNG
    summary = json.loads((out / "explain.json").read_text())
    assert summary["tokens"] == list("To be, or not") and len(summary["top_prediction"]) == 13
    assert "logit_lens" in capsys.readouterr().out


def test_explain_a_masked_lm_run_fills_its_masks(runs, tmp_path):
    summary = explain(runs / "mlm", "the dogs near the tree [MASK] kind .", tmp_path / "figs")
    assert summary["kind"].startswith("pretrain")
    assert summary["tokens"][0] == "[CLS]" and "[MASK]" in summary["tokens"] and summary["tokens"][-1] == "[SEP]"
    assert all((tmp_path / "figs" / f"{n}.png").read_bytes()[:8] == PNG for n in ("attention", "rollout", "logit_lens"))


def test_the_html_page_is_self_contained_and_holds_the_patterns(runs, tmp_path):
    """explain.html: the weights inlined as JSON equal the model's patterns (interp.1); nothing is fetched; the
    inline script parses (node --check, where node is installed)."""
    import re
    import shutil
    import subprocess

    from minitx.interpret.cache import run_with_cache
    from minitx.recipes.lm.generate import load_lm
    summary = explain(runs / "lm", "To be, or", tmp_path, html=True)
    page = (tmp_path / "explain.html").read_text()
    assert summary["figures"]["html"].endswith("explain.html")
    assert "http" not in page and "<link" not in page and " src=" not in page
    data = json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S)[1])
    model, tokenizer = load_lm(runs / "lm")
    _, cache = run_with_cache(model, torch.tensor([tokenizer.encode("To be, or")]))
    assert data["tokens"] == list("To be, or")
    torch.testing.assert_close(torch.tensor(data["patterns"]), cache.stack("attention.pattern")[:, 0], atol=1e-4,
                               rtol=0)
    script = re.findall(r"<script>(.*?)</script>", page, re.S)
    assert len(script) == 1
    if shutil.which("node"):
        js = tmp_path / "page.js"
        js.write_text(script[0])
        assert subprocess.run(["node", "--check", str(js)], capture_output=True).returncode == 0


def test_explain_errors_are_one_line(runs, tmp_path, capsys):
    assert main(["explain", str(tmp_path / "nothing"), "text"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("minitx: error: run:") and err.count("\n") == 1
    assert main(["explain", str(runs / "lm"), "  "]) == 2
    assert "text: expected a non-empty string" in capsys.readouterr().err

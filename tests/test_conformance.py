"""`minitx check` is sound both ways: correct code passes, each realistic bug fails, with the right adapter named.

- minitx's own references and an independent plain-PyTorch implementation pass every adapter;
- every mutant in tests/conformance/mutants.py (a learner's bug, one per function) fails its own adapter: the
  kill rate must be 100%; each runs against its adapter only, few examples, no shrinking (suite time);
- the command's exit codes (0 pass, 1 fail, 2 usage error), its lines, the pytest fixture, and the message
  that names `pip install 'minitx[check]'` when Hypothesis is missing.
The labels the FAIL lines cite are the docs/math labels of the equations checked, e.g. (attn.3) for the causal
mask, (softmax.4) for a fully masked row, (pos.3) for the RoPE pairing, (lora.5) for the scaling.
"""

import sys
import time
import types
from pathlib import Path

import pytest
import torch

from minitx.cli import main
from minitx.conformance import references
from minitx.conformance.runner import ADAPTERS, check

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conformance import plain_torch  # noqa: E402
from conformance.mutants import MUTANTS  # noqa: E402

pytest_plugins = ["pytester"]


def test_minitx_references_pass_every_adapter_within_a_minute_of_one_core():
    """The references are minitx's own functions; the full default check of all 18 adapters (the 17
    functions and the whole GPT) is the budget."""
    torch.set_num_threads(1)
    start = time.thread_time()
    report = check(references)
    cpu = time.thread_time() - start
    assert report.passed == list(ADAPTERS), str(report)
    assert cpu <= 60, f"a full check took {cpu:.1f} s of CPU time"


def test_a_plain_pytorch_implementation_passes_every_adapter():
    report = check(plain_torch, examples=10)
    assert report.passed == list(ADAPTERS), str(report)


@pytest.mark.filterwarnings("ignore:var\\(\\). degrees of freedom")  # the unbiased-variance mutant at C = 1
def test_every_mutant_is_killed_by_its_own_adapter():
    assert len(MUTANTS) >= 40
    survivors, wrong_label = [], []
    for name, what, fn in MUTANTS:
        report = check(types.SimpleNamespace(**{ADAPTERS[name].function: fn}), only=[name], examples=5,
                       shrink=False)
        if report.failed != [name]:
            survivors.append(f"{name}: {what}")
            continue
        line = report.result(name).line()
        if not line.startswith(f"FAIL {name}: "):
            wrong_label.append(line)
    kill_rate = (len(MUTANTS) - len(survivors)) / len(MUTANTS)
    print(f"kill rate {kill_rate:.0%} of {len(MUTANTS)} mutants")
    assert not survivors and not wrong_label, (survivors, wrong_label)


@pytest.mark.parametrize("adapter, what, label, hint", [
    ("scaled_dot_product_attention", "NaN on a fully masked row", "(softmax.4)", "not NaN"),
    ("scaled_dot_product_attention", "causal mask off by one (diagonal excluded)", "(attn.3)", "off by one"),
    ("scaled_dot_product_attention", "no 1/sqrt(D) scaling", "(attn.1)", "not scaled by 1/sqrt(D)"),
    ("scaled_dot_product_attention", "mask inverted (True = masked out)", "(attn.2)", "inverted"),
    ("rope", "interleaved pairing (2i, 2i+1)", "(pos.3)", "interleaved pairing"),
    ("rope", "rotates the wrong way", "(pos.4)", "pairing: rotate-half"),
    ("lora_linear", "scaled by alpha, not alpha / r", "(lora.5)", "alpha instead of alpha / r"),
    ("layer_norm", "detaches the variance (values right, gradients wrong)", "(ln.6)", "gradients of input 1"),
    ("mlm_masking", "special tokens can be selected", "(mlm.2)", "was selected"),
    ("adamw", "L2 in the gradient instead of decoupled decay", "(opt.1)-(opt.2)", "after step 1"),
])
def test_a_failure_names_the_equation_it_breaks_and_the_mistake(adapter, what, label, hint):
    fn = next(f for a, w, f in MUTANTS if a == adapter and w == what)
    report = check(types.SimpleNamespace(**{ADAPTERS[adapter].function: fn}), only=[adapter], examples=2)
    line = report.result(adapter).line()
    assert line.startswith(f"FAIL {adapter}: ") and f"breaks {label}" in line and hint in line, line
    assert "smallest failing input: " in line


def test_hypothesis_shrinks_a_failure_to_a_small_input():
    """A bug that shows on every input is reported on the smallest one Hypothesis finds, not a big random one."""
    def no_scale(q, k, v, attn_mask=None, is_causal=False, scale=None):
        return torch.softmax(q @ k.transpose(-2, -1), -1) @ v
    report = check(types.SimpleNamespace(scaled_dot_product_attention=no_scale), only=["scaled_dot_product_attention"],
                   examples=3)
    m = report.result("scaled_dot_product_attention").mismatch
    assert m is not None and m.label == "attn.1"
    # the first edge case (N=3, M=5, D=4) already fails; shrinking keeps its sizes no larger
    assert "N=3" in m.case and "M=5" in m.case, m.case


def _adapters_file(tmp_path, body):
    path = tmp_path / "adapters.py"
    path.write_text("import torch\n\n" + body)
    return str(path)


def test_command_passes_fails_and_skips_with_exit_codes_0_and_1(tmp_path, capsys):
    good = _adapters_file(tmp_path, "def softmax(x, dim=-1):\n    return torch.softmax(x, dim)\n")
    assert main(["check", good, "--examples", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "PASS softmax" and "SKIP layer_norm (not provided)" in out
    assert out[-1].startswith("1 passed, 0 failed, 17 skipped (not provided) of 18 adapters")
    bad = _adapters_file(tmp_path, "def softmax(x, dim=-1):\n    return torch.exp(x) / torch.exp(x).sum(dim, True)\n"
                                   "def gelu(x):\n    return torch.nn.functional.gelu(x)\n")
    assert main(["check", bad, "--examples", "3", "--seed", "1"]) == 1
    out = capsys.readouterr().out
    assert "FAIL softmax: values: nan" in out and "(softmax.1)" in out and "PASS gelu" in out
    assert main(["check", bad, "--only", "gelu", "--examples", "2"]) == 0
    assert "softmax" not in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["check", "no/such/adapters.py"], "ADAPTERS: no such file"),
    (["check", "{good}", "--only", "attention"], "--only: unknown adapter 'attention'"),
    (["check", "{wrong}"], "softmax: expected the signature softmax(x, dim=-1)"),
    (["check", "{good}", "--examples", "0"], "examples: expected an int >= 1"),
])
def test_usage_errors_are_one_line_and_exit_2(tmp_path, capsys, argv, message):
    good = _adapters_file(tmp_path, "def softmax(x, dim=-1):\n    return torch.softmax(x, dim)\n")
    wrong = str(tmp_path / "wrong.py")
    Path(wrong).write_text("def softmax(x):\n    return x\n")
    assert main([a.format(good=good, wrong=wrong) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("minitx: error: ") and message in err[0], err


def test_without_hypothesis_the_message_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "hypothesis", None)  # `import hypothesis` now raises ImportError
    with pytest.raises(ImportError, match=r"minitx check needs Hypothesis.*pip install 'minitx\[check\]'"):
        check(plain_torch)
    assert main(["check", "adapters.py"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("minitx: error: ") and "pip install 'minitx[check]'" in err[0]


def test_pytest_fixture_fails_a_learners_test_with_the_report(pytester):
    pytester.makepyfile(test_learner="""
        def test_good(minitx_check, tmp_path):
            f = tmp_path / "a.py"
            f.write_text("import torch\\ndef gelu(x):\\n    return torch.nn.functional.gelu(x)\\n")
            assert minitx_check(str(f), examples=2).passed == ["gelu"]

        def test_bad(minitx_check, tmp_path):
            f = tmp_path / "a.py"
            f.write_text("import torch\\ndef gelu(x):\\n    return torch.nn.functional.gelu(x, approximate='tanh')\\n")
            minitx_check(str(f), examples=2)
    """)
    result = pytester.runpytest_inprocess("-p", "minitx.conformance.pytest_plugin", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*FAIL gelu: values differ*(gelu.1)*"])


def test_a_function_that_fails_only_sometimes_is_a_failure_that_says_so():
    calls = [0]

    def softmax(x, dim=-1):  # every 7th call is off by 1%: Hypothesis' replay of the failure passes
        calls[0] += 1
        return torch.softmax(x, dim) * (1.01 if calls[0] % 7 == 0 else 1.0)

    report = check(types.SimpleNamespace(softmax=softmax), only=["softmax"], examples=30, shrink=False)
    assert report.failed == ["softmax"] and "failed only sometimes" in report.result("softmax").detail

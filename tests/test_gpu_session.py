"""The GPU session (benchmarks/gpu_session.py) cannot rot: its step budgets fit one lent call, a step that
overruns is killed and the archive still holds everything so far, the per-test timeout fails only the slow
test, and the whole first session runs end to end on this CPU at tiny sizes (`--dry-run`, the Triton kernels
under the interpreter)."""

import json
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_session  # noqa: E402  (benchmarks/ is on sys.path: it imports gpu_summary)

LENT_CALL_S = 600  # one command on a lent machine
MAX_FILES = 8      # what comes back from $OUT


@pytest.mark.parametrize("mode", sorted(gpu_session.BUDGETS))
def test_step_budgets_add_up_to_at_most_540_s(mode, tmp_path):
    steps = gpu_session.plan(mode, tmp_path, dry=False)
    assert [s.name for s in steps] == list(gpu_session.BUDGETS[mode])
    total = sum(s.budget_s for s in steps) + gpu_session.PACK_RESERVE_S
    assert total <= gpu_session.BUDGET_S <= 540 < LENT_CALL_S, total
    assert all(s.budget_s > 0 and s.argv for s in steps)
    if mode == "first":  # the gpu tests come right after the environment, before anything that may overrun
        assert [s.name for s in steps][:2] == ["environment", "gpu_tests"]
        sweeps = [s for s in steps if s.name.startswith("sweep")]
        assert all("bf16" in s.argv and "16384" in s.argv and "sdpa:cudnn" in s.argv for s in sweeps)


def test_an_overrunning_step_is_killed_and_the_archive_still_delivers(tmp_path):
    session = gpu_session.Session("first", tmp_path / "work", tmp_path / "out", dry=True, budget_s=60)
    (tmp_path / "work" / "early.json").write_text("{}")
    row = session.run(gpu_session.Step("sleepy", 3, "never finishes",
                                       [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"]))
    assert row["timed_out"] and row["rc"] != 0 and row["wall_s"] < 15 and row["status"] == "timed out (killed)"
    files = list((tmp_path / "out").iterdir())
    assert sorted(f.name for f in files) == ["gpu_session_first.tar.gz", "summary_first.md"]
    with tarfile.open(tmp_path / "out" / "gpu_session_first.tar.gz") as tar:
        names = tar.getnames()
        assert "gpu_session_first/early.json" in names and "gpu_session_first/sleepy.log" in names
        log = tar.extractfile("gpu_session_first/sleepy.log").read().decode()
    assert "started" in log
    assert "| sleepy | 3 |" in (tmp_path / "out" / "summary_first.md").read_text()
    out_of_time = gpu_session.Session("first", tmp_path / "w2", tmp_path / "o2", dry=True, budget_s=20)
    assert out_of_time.run(gpu_session.Step("late", 30, "", [sys.executable, "-c", "pass"]))["status"] == \
        "not run: out of time"  # 20 s budget - 20 s reserve leaves nothing: the step never starts


def test_per_test_timeout_fails_the_slow_test_only(tmp_path):
    (tmp_path / "test_slow.py").write_text("import time\n\ndef test_slow():\n    time.sleep(30)\n\n"
                                           "def test_fast():\n    assert True\n")
    xml = tmp_path / "junit.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "gpu_test_timeout", "--test-timeout", "1",
                           "-p", "no:cacheprovider", f"--junitxml={xml}", str(tmp_path / "test_slow.py")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT / "benchmarks")})
    assert proc.returncode == 1, proc.stdout[-2000:]
    suite = ET.parse(xml).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1")
    assert "longer than --test-timeout 1" in proc.stdout


@pytest.mark.slow
def test_dry_run_runs_every_step_end_to_end(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_session.sh"), "--dry-run", "--out", str(out),
                           "--work", str(work)], capture_output=True, text=True, timeout=300)
    status = json.loads((work / "status.json").read_text())
    assert [r["step"] for r in status["steps"]] == list(gpu_session.BUDGETS["first"])
    bad = {r["step"]: (r["rc"], (work / r["log"]).read_text()[-1500:]) for r in status["steps"] if r["rc"] != 0}
    assert not bad and proc.returncode == 0, bad or proc.stdout[-2000:]
    assert len(list(out.iterdir())) <= MAX_FILES
    with tarfile.open(out / "gpu_session_first.tar.gz") as tar:
        names = {Path(n).name for n in tar.getnames()}
    per_file = {f"gpu_tests_{Path(f).stem}.{ext}" for f in gpu_session.GPU_TEST_FILES for ext in ("xml", "log")}
    assert per_file | {"environment.json", "autotune.jsonl", "attention_d128.json",
            "attention_d64.json", "attention_flex.json", "compile_check.xml", "status.json", "summary.md"} <= names
    collected = sum(int(ET.parse(work / f"gpu_tests_{Path(f).stem}.xml").getroot().find("testsuite").get("tests"))
                    for f in gpu_session.GPU_TEST_FILES)
    assert collected >= 30  # the gpu-marked tests of every file were collected (and skipped here: no CUDA)
    rows = [json.loads(line) for line in (work / "autotune.jsonl").read_text().splitlines()]
    assert {r["kernel"] for r in rows} == {"fwd", "dkdv", "dq", "atomic"} and len(rows) == 17
    for stem in ("attention_d128", "attention_d64"):
        doc = json.loads((work / f"{stem}.json").read_text())
        flash = [r for r in doc["results"] if r["impl"] == "minitx:flash"]
        assert flash and all(r["status"] == "ok" for r in flash)  # gated against float64 under the interpreter
        assert {r["mask"] for r in flash} == {"full", "causal"}
    summary = (out / "summary_first.md").read_text()
    assert "DRY RUN" in summary and all(f"| {s} |" in summary for s in gpu_session.BUDGETS["first"])


def test_a_terminated_test_run_still_writes_its_junit_xml(tmp_path):
    """The step timeout's SIGTERM becomes a KeyboardInterrupt (gpu_test_timeout): pytest writes the XML of
    the tests that ran before the SIGKILL would come."""
    import os
    import signal
    import time

    (tmp_path / "test_two.py").write_text("import time\n\ndef test_first():\n    assert True\n\n"
                                          "def test_hangs():\n    time.sleep(60)\n")
    xml = tmp_path / "junit.xml"
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "gpu_test_timeout", "-p", "no:cacheprovider",
                             "-v", f"--junitxml={xml}", str(tmp_path / "test_two.py")], cwd=tmp_path,
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "benchmarks")})
    seen = ""
    deadline = time.monotonic() + 60
    while "test_first PASSED" not in seen and time.monotonic() < deadline:
        seen += proc.stdout.readline()
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    suite = ET.parse(xml).getroot().find("testsuite")
    assert int(suite.get("tests")) >= 1
    assert any(c.get("name") == "test_first" for c in suite.iter("testcase"))


@pytest.mark.slow
def test_dry_run_of_the_second_call(tmp_path):
    """The second call's steps (training comparison, the papers' full sweep, the varlen point) run end to end."""
    out, work = tmp_path / "out", tmp_path / "work"
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_session.sh"), "--dry-run", "--mode", "second",
                           "--out", str(out), "--work", str(work)], capture_output=True, text=True, timeout=300)
    status = json.loads((work / "status.json").read_text())
    assert [r["step"] for r in status["steps"]] == list(gpu_session.BUDGETS["second"])
    assert proc.returncode == 0 and all(r["rc"] == 0 for r in status["steps"]), proc.stdout[-2000:]
    training = json.loads((work / "training.json").read_text())
    flash = [r for r in training["results"] if r["impl"] == "minitx:flash"]
    # attention dropout is on (0.1): flash is skipped only because a CPU cannot time it, never for dropout
    assert training["config"]["attention_dropout"] > 0 and flash and "dropout" not in (flash[0]["reason"] or "")
    varlen = json.loads((work / "attention_varlen.json").read_text())  # packed sequences, flash under the interpreter
    assert varlen["config"]["varlen"] and {(r["impl"], r["status"]) for r in varlen["results"]} == {
        ("minitx:flash", "ok"), ("sdpa:math", "ok")}
    assert sorted(p.name for p in out.iterdir()) == ["gpu_session_second.tar.gz", "summary_second.md"]


def test_a_failing_pack_never_stops_the_session(tmp_path, monkeypatch, capsys):
    session = gpu_session.Session("first", tmp_path / "work", tmp_path / "out", dry=True, budget_s=60)
    session.pack()
    before = (tmp_path / "out" / "gpu_session_first.tar.gz").read_bytes()

    def broken(*args, **kwargs):
        raise FileNotFoundError("a step deleted a file while it was packed")
    monkeypatch.setattr(gpu_session.tarfile, "open", broken)
    row = session.run(gpu_session.Step("quick", 10, "", [sys.executable, "-c", "print('done')"]))
    assert row["status"] == "ok" and row["rc"] == 0
    assert (tmp_path / "out" / "gpu_session_first.tar.gz").read_bytes() == before  # the last good archive
    assert "packing failed" in capsys.readouterr().err

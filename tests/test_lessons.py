"""Every lesson runs top to bottom, as a plain script, with MINITX_FAST=1 (each lesson asserts its own claims);
three fast ones also run as notebooks (jupytext + nbclient) and must show every figure they save inline."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LESSONS = sorted((ROOT / "lessons").glob("[0-9][0-9]_*.py"))
SOLUTIONS = sorted((ROOT / "lessons" / "solutions").glob("[0-9][0-9]_*.py"))
AS_NOTEBOOKS = ["01_attention_from_scratch", "02_multi_head_attention", "03_positional_encodings"]  # fast ones


def test_there_are_lessons():
    assert len(LESSONS) >= 4, f"expected lessons under lessons/, found {[p.name for p in LESSONS]}"


@pytest.mark.parametrize("lesson", LESSONS, ids=[p.stem for p in LESSONS])
def test_lesson_runs(lesson, tmp_path):
    env = dict(os.environ, MINITX_FAST="1", MINITX_OUTPUT_DIR=str(tmp_path), MPLBACKEND="Agg",
               TRITON_INTERPRET="1", PYTHONHASHSEED="0")
    result = subprocess.run([sys.executable, str(lesson)], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, f"{lesson.name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    figures = list(tmp_path.rglob("*.png"))
    assert figures, f"{lesson.name} saved no figure into MINITX_OUTPUT_DIR"


def test_every_lesson_has_exercises_and_their_solutions_run(tmp_path):
    """Each lesson ends with exercises pointing at its solutions file; all solutions run, in one interpreter."""
    for lesson in LESSONS:
        text = lesson.read_text(encoding="utf-8")
        assert "## Exercises" in text, f"{lesson.name} has no exercises"
        assert f"lessons/solutions/{lesson.name}" in text, f"{lesson.name} does not point at its solutions"
    with_solutions = {p.name for p in SOLUTIONS}
    missing = [p.name for p in LESSONS if p.name not in with_solutions]
    assert not missing, f"lessons without a solutions file: {missing}"
    runner = "import runpy, sys\nfor path in sys.argv[1:]:\n    print(path, flush=True)\n    runpy.run_path(path)\n"
    env = dict(os.environ, MINITX_FAST="1", MINITX_OUTPUT_DIR=str(tmp_path), MPLBACKEND="Agg",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", runner, *map(str, SOLUTIONS)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"a solution failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"


@pytest.mark.parametrize("stem", AS_NOTEBOOKS)
def test_lesson_runs_as_a_notebook_with_inline_figures(stem, tmp_path, monkeypatch):
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    lesson = ROOT / "lessons" / f"{stem}.py"
    assert lesson.exists(), f"{lesson} is one of the lessons CI runs as a notebook"
    notebook = jupytext.read(lesson)
    # the kernel inherits this environment: no backend forced (Jupyter's inline one must win), figures to tmp
    monkeypatch.delenv("MPLBACKEND", raising=False)
    monkeypatch.setenv("MINITX_FAST", "1")
    monkeypatch.setenv("MINITX_OUTPUT_DIR", str(tmp_path / "output"))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(lesson.parent)}}).execute()
    inline = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
              if "image/png" in o.get("data", {})]
    saved = list((tmp_path / "output").rglob("*.png"))
    assert saved, f"{stem} saved no figure"
    assert len(inline) >= len(saved), f"{stem}: {len(saved)} figures saved but {len(inline)} shown inline"
    errors = [o for cell in notebook.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


def test_figures_land_next_to_the_lesson_without_output_dir(tmp_path, monkeypatch):
    """No MINITX_OUTPUT_DIR: a script writes to output/ beside itself wherever it was started from; a notebook
    (whose kernel Jupyter starts in the notebook's folder) to output/ in its working directory."""
    from minitx import plots

    script = tmp_path / "lessons" / "99_where.py"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.delenv("MINITX_OUTPUT_DIR", raising=False)
    monkeypatch.setattr(sys.modules["__main__"], "__file__", str(script), raising=False)
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(plots, "in_notebook", lambda: False)
    assert plots.output_dir() == script.parent / "output" and (script.parent / "output").is_dir()
    assert not (elsewhere / "lessons").exists()
    monkeypatch.setattr(plots, "in_notebook", lambda: True)
    assert plots.output_dir() == elsewhere / "output"
    monkeypatch.setenv("MINITX_OUTPUT_DIR", str(tmp_path / "chosen"))
    assert plots.output_dir() == tmp_path / "chosen"


def test_plots_forces_agg_only_for_a_headless_script(monkeypatch):
    """Agg only for a plain script on a display-less Linux; never inside IPython/Jupyter or under MPLBACKEND."""
    import types

    from minitx import plots

    for name in ("MPLBACKEND", "DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(plots.sys, "platform", "linux")
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert plots._wants_agg()
    monkeypatch.setenv("DISPLAY", ":0")
    assert not plots._wants_agg()
    monkeypatch.delenv("DISPLAY")
    monkeypatch.setenv("MPLBACKEND", "svg")
    assert not plots._wants_agg()
    monkeypatch.delenv("MPLBACKEND")
    monkeypatch.setattr(plots.sys, "platform", "darwin")  # macOS and Windows have their own window system
    assert not plots._wants_agg()
    monkeypatch.setattr(plots.sys, "platform", "linux")
    shell = types.ModuleType("IPython")
    shell.get_ipython = lambda: None  # IPython imported but no shell running (a library imported it): a script
    monkeypatch.setitem(sys.modules, "IPython", shell)
    assert plots._wants_agg() and not plots.in_notebook()
    shell.get_ipython = lambda: object()  # a running kernel (Jupyter, Colab, VS Code): its inline backend stays
    assert not plots._wants_agg() and plots.in_notebook()

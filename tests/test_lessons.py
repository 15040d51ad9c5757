"""Every lesson runs top to bottom, as a plain script, with MINITX_FAST=1 (each lesson asserts its own claims)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

LESSONS = sorted((Path(__file__).resolve().parent.parent / "lessons").glob("[0-9][0-9]_*.py"))


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

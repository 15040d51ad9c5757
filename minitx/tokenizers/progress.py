"""Progress of a long tokenizer training: a tqdm bar on a terminal, plain lines otherwise (DESIGN: the command line).

`merge_progress(total, desc, progress)` returns `report(done)`: call it after each merge with the number done,
and once with None at the end. progress=True reports from the start, False never, None (the trainers' default)
only once the run has lasted `LONG_S` seconds, so the short trainings of tests and lessons stay silent and a
long one (a big corpus, a big vocabulary) says where it is.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

from tqdm.auto import tqdm

__all__ = ["merge_progress", "LONG_S"]

LONG_S = 2.0  # progress=None: silent until a training has run this long


def merge_progress(total: int, desc: str, progress: bool | None,
                   file: TextIO | None = None) -> Callable[[int | None], None]:
    """report(done) after each merge, report(None) at the end; `file` defaults to sys.stderr at call time."""
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"progress: expected True, False or None, got {progress!r}")
    if progress is False or total <= 0:
        return lambda done: None
    out = sys.stderr if file is None else file
    delay = 0.0 if progress else LONG_S
    start = time.monotonic()
    if out.isatty():
        bar = tqdm(total=total, desc=desc, delay=delay, file=out, dynamic_ncols=True)

        def report_bar(done: int | None) -> None:
            if done is None:
                bar.close()
            else:
                bar.update(done - bar.n)
        return report_bar

    step = max(1, total // 10)  # a line per tenth of the run
    state = {"next": step, "spoke": False}

    def report_lines(done: int | None) -> None:
        if done is not None and done < state["next"]:
            return
        elapsed = time.monotonic() - start
        if done is None:
            if state["spoke"]:
                print(f"{desc}: done in {elapsed:.1f} s", file=out, flush=True)
            return
        state["next"] = (done // step + 1) * step
        if elapsed >= delay:
            state["spoke"] = True
            print(f"{desc}: {done}/{total} ({100 * done // total}%), {elapsed:.1f} s", file=out, flush=True)
    return report_lines

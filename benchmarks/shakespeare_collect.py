"""Copy the small files of a `minitx pretrain --corpus shakespeare` run into docs/results/pretrain_shakespeare/.

    flock /tmp/minitx-timing.lock /usr/bin/time -v python3 -m minitx pretrain --corpus shakespeare \
        --out-dir /tmp/rt_shk --no-progress > /tmp/rt_shk.out 2> /tmp/rt_shk.time
    python benchmarks/shakespeare_collect.py /tmp/rt_shk /tmp/rt_shk.out /tmp/rt_shk.time

Writes summary.json, metrics.jsonl, loss_curve.png (copied), stdout.txt, time.txt (the first 10 lines of
`/usr/bin/time -v`), eval_with_baselines.json (the last eval record: loss, accuracy, and both at the
`[MASK]` positions, with the unigram baseline's), and fill_mask.md (benchmarks/shakespeare_fill_mask.py, its
rule-chosen held-out lines). No checkpoint.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4):
        print(__doc__)
        return 2
    run, stdout, timing = (Path(a) for a in argv[:3])
    dest = Path(argv[3]) if len(argv) == 4 else Path("docs/results/pretrain_shakespeare")
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("summary.json", "metrics.jsonl", "loss_curve.png"):
        shutil.copyfile(run / name, dest / name)
    shutil.copyfile(stdout, dest / "stdout.txt")
    (dest / "time.txt").write_text("".join(timing.read_text().splitlines(keepends=True)[:10]))
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(line).get("split") == "eval"]
    last = {k: v for k, v in evals[-1].items() if k not in ("step", "split")}
    (dest / "eval_with_baselines.json").write_text(json.dumps(last) + "\n")
    here = Path(__file__).parent
    subprocess.run([sys.executable, str(here / "shakespeare_fill_mask.py"), str(run), "--n", "12",
                    "--out", str(dest / "fill_mask.md")], check=True, stdout=subprocess.DEVNULL)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

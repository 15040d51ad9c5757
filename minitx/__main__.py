"""`python -m minitx ...` is the same as the `minitx` console script (and what `torchrun -m minitx` runs)."""

from minitx.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

"""Built-in real corpora, shipped with the package so that `minitx pretrain --corpus NAME` works offline.

shakespeare: "tiny Shakespeare", 40,000 lines of the plays (public domain), as char-rnn and nanoGPT use it:
`data/tinyshakespeare/input.txt` of github.com/karpathy/char-rnn, 1,115,394 bytes, sha256 below. It is stored
gzipped (434 KB) and read lazily, line by line.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Iterator

__all__ = ["CORPORA", "corpus_file", "iter_corpus_lines"]

_HERE = Path(__file__).resolve().parent
# name -> (file in this package, sha256 of the uncompressed text, description)
CORPORA: dict[str, tuple[str, str, str]] = {
    "shakespeare": ("tinyshakespeare.txt.gz",
                    "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
                    "tiny Shakespeare: 40,000 lines of the plays (karpathy/char-rnn), public domain"),
}


def corpus_file(name: str) -> Path:
    """The packaged (gzipped) file of a built-in corpus."""
    if name not in CORPORA:
        raise ValueError(f"corpus: expected one of {sorted(CORPORA)}, got {name!r}")
    return _HERE / CORPORA[name][0]


def iter_corpus_lines(name: str, skip_empty: bool = True) -> Iterator[str]:
    """The lines of a built-in corpus (newline stripped), decompressed as they are read."""
    with gzip.open(corpus_file(name), "rt", encoding="utf-8", newline="") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if line.strip() or not skip_empty:
                yield line

"""User text files, read lazily line by line (a 1 GB file is never held whole)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

__all__ = ["iter_text_files"]


def iter_text_files(paths: str | Path | Iterable[str | Path], encoding: str = "utf-8",
                    skip_empty: bool = True) -> Iterator[str]:
    """Yield the lines of each file in turn (newline stripped), reading lazily: a file is never held whole.
    A file that is not valid `encoding` (a binary file) raises ValueError naming the file and the line."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    for path in paths:
        path = Path(path)
        if path.is_dir():
            raise ValueError(f"paths: expected text files, got the directory {str(path)!r}")
        if not path.is_file():
            raise ValueError(f"paths: expected existing text files, got {str(path)!r} (no such file)")
        with open(path, encoding=encoding) as f:
            number = 0
            try:
                for number, line in enumerate(f, start=1):  # file iteration reads a buffer at a time
                    line = line.rstrip("\r\n")
                    if line.strip() or not skip_empty:
                        yield line
            except UnicodeDecodeError as e:
                raise ValueError(f"paths: {str(path)!r} is not {encoding} text (near line {number + 1}: "
                                 f"{e.reason} at byte {e.start} of a read buffer); is it a binary file?") from None

"""Pre-tokenization, as BERT's BasicTokenizer: normalize text, then split it into words.

The rules (docs/tokenizer.md), in BERT's order:
1. clean: NUL, U+FFFD and every control/format/unassigned/private character (Unicode category C*) are
   dropped, except tab, newline and carriage return, which are whitespace;
2. every CJK ideograph becomes a word of its own (Japanese kana and Korean hangul do not: BERT's ranges);
3. NFC; with `lowercase`, lowercasing and accent stripping (NFD, combining marks Mn dropped: "Été" -> "ete");
   without it (cased), the text keeps its case and accents;
4. whitespace separates words, and every punctuation mark (ASCII symbols and Unicode P*) is a word of its own.
The work is linear in the text: whole-text passes run in C (str.lower, unicodedata.normalize, str.split), and
only non-ASCII characters or tokens that are not plain ASCII letters and digits take a Python loop.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Iterator

__all__ = ["pre_tokenize", "iter_words"]

_ASCII_DROPPED = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # C0 controls but \t \n \r, and DEL
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
               (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _is_punctuation(ch: str) -> bool:
    # BERT's rule: every non-alphanumeric printable ASCII character counts, plus Unicode category P*.
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def _clean_non_ascii(match: re.Match) -> str:
    ch = match.group()
    if ch == "\ufffd" or unicodedata.category(ch).startswith("C"):
        return ""
    return f" {ch} " if _is_cjk(ch) else ch


def _drop_marks(match: re.Match) -> str:
    return "" if unicodedata.category(match.group()) == "Mn" else match.group()


def normalize_text(text: str, lowercase: bool = True) -> str:
    """Steps 1-3 of the module docstring: the text that is then split on whitespace and punctuation."""
    if not isinstance(text, str):
        raise TypeError(f"text: expected str, got {type(text).__name__}")
    text = _ASCII_DROPPED.sub("", text)
    if text.isascii():
        return text.lower() if lowercase else text
    text = unicodedata.normalize("NFC", _NON_ASCII.sub(_clean_non_ascii, text))
    if lowercase:
        text = _NON_ASCII.sub(_drop_marks, unicodedata.normalize("NFD", text.lower()))
    return text


def _split_punctuation(token: str) -> Iterator[str]:
    current: list[str] = []
    for ch in token:
        if _is_punctuation(ch):
            if current:
                yield "".join(current)
                current = []
            yield ch
        else:
            current.append(ch)
    if current:
        yield "".join(current)


def iter_words(text: str, lowercase: bool = True) -> Iterator[str]:
    """The words of `text`, lazily (so a caller that needs only the first few stops early)."""
    for token in normalize_text(text, lowercase).split():
        if token.isalnum() and token.isascii():  # the common case: a plain word, no punctuation inside
            yield token
        else:
            yield from _split_punctuation(token)


def pre_tokenize(text: str, lowercase: bool = True) -> list[str]:
    """Normalize `text` and split it into words (BERT's BasicTokenizer; see the module docstring)."""
    return list(iter_words(text, lowercase))

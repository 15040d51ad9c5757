"""Pre-tokenization, as BERT's BasicTokenizer: normalize text, then split it into words.

Optional lowercasing with accent stripping (NFD, combining marks dropped); control characters dropped;
whitespace separates words, and every punctuation mark and CJK character is a word of its own. WordPiece
(minitx.tokenizer) then cuts each word into pieces.
"""

from __future__ import annotations

import unicodedata

__all__ = ["pre_tokenize"]


def _is_punctuation(ch: str) -> bool:
    # BERT's rule: every non-alphanumeric printable ASCII character counts, plus Unicode category P*.
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0xF900 <= cp <= 0xFAFF
            or 0x2F800 <= cp <= 0x2FA1F)


def _is_dropped(ch: str) -> bool:
    # NUL, the replacement character and control/format characters carry no text (tab/newline are whitespace).
    return ch in "\x00\ufffd" or (unicodedata.category(ch) in ("Cc", "Cf") and not ch.isspace())


def pre_tokenize(text: str, lowercase: bool = True) -> list[str]:
    """Normalize `text` and split it into words (BERT's BasicTokenizer)."""
    if not isinstance(text, str):
        raise TypeError(f"text: expected str, got {type(text).__name__}")
    if lowercase:  # lowercase, then NFD and drop combining marks: "Éte" -> "ete"
        text = "".join(c for c in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(c) != "Mn")
    words: list[str] = []
    current: list[str] = []
    for ch in text:
        if _is_dropped(ch):
            continue
        if ch.isspace() or _is_punctuation(ch) or _is_cjk(ch):
            if current:
                words.append("".join(current))
                current = []
            if not ch.isspace():
                words.append(ch)
        else:
            current.append(ch)
    if current:
        words.append("".join(current))
    return words

"""A built-in sequence-to-sequence task: dates written the many ways people write them, to ISO 8601.

    "12 March 1999", "March 12, 1999", "12/03/1999", "the 12th of March 1999", ...  ->  "1999-03-12"

Checkable at a glance, generated (nothing shipped), and it needs attention across the two sequences: the
output's year, month and day sit in different places of the source depending on the style, and the month is a
word to be turned into two digits. Dates run from 1900-01-01 to 2099-12-31; each date belongs to one split for
good (a hash of the date), so no test date is ever trained on, whatever the style.
"""

from __future__ import annotations

import datetime
import random

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
FIRST, LAST = datetime.date(1900, 1, 1).toordinal(), datetime.date(2099, 12, 31).toordinal()
SPLITS = ("train", "validation", "test")


def _ordinal_suffix(day: int) -> str:
    return "th" if 11 <= day <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")


STYLES = (
    lambda d: f"{d.day} {MONTHS[d.month - 1]} {d.year}",              # 12 March 1999
    lambda d: f"{MONTHS[d.month - 1]} {d.day}, {d.year}",             # March 12, 1999
    lambda d: f"{d.day} {MONTHS[d.month - 1][:3]} {d.year}",          # 12 Mar 1999
    lambda d: f"{MONTHS[d.month - 1][:3]} {d.day} {d.year}",          # Mar 12 1999
    lambda d: f"{d.day:02d}/{d.month:02d}/{d.year}",                  # 12/03/1999 (day first)
    lambda d: f"{d.year}, {MONTHS[d.month - 1]} {d.day}",             # 1999, March 12
    lambda d: f"the {d.day}{_ordinal_suffix(d.day)} of {MONTHS[d.month - 1]} {d.year}",  # the 12th of March 1999
    lambda d: f"{d.day}.{d.month}.{d.year}",                          # 12.3.1999
)


def split_of(date: datetime.date) -> str:
    """The split a date belongs to, for good: 10% test, 10% validation, 80% train (a hash of the day)."""
    bucket = (date.toordinal() * 2654435761 >> 7) % 10
    return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


def date_pair(date: datetime.date, style: int) -> tuple[str, str]:
    """(source, target) for one date in one of the `STYLES`."""
    return STYLES[style](date), date.isoformat()


def date_pairs(n: int, split: str = "train", seed: int = 0) -> list[tuple[str, str]]:
    """`n` (source, target) pairs of `split`, dates and styles drawn with `seed`; the same arguments give the
    same pairs, and a longer list starts with the shorter one."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n: expected an int >= 0, got {n!r}")
    rng = random.Random(f"dates/{split}/{seed}")
    pairs = []
    while len(pairs) < n:
        date = datetime.date.fromordinal(rng.randint(FIRST, LAST))
        style = rng.randrange(len(STYLES))
        if split_of(date) == split:
            pairs.append(date_pair(date, style))
    return pairs

"""Labelled examples for fine-tuning: the built-in sentiment task, or the user's CSV / JSONL files.

A file is read whole (labelled data is small) and checked row by row; a bad row is a ValueError that names the
file, the row and what was wrong, so a typo in row 4,312 is found without bisecting the file.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from minitx.data.synthetic import SyntheticLanguage, split_of
from minitx.seeding import seed_for
from minitx.tokenizers.wordpiece import WordPieceTokenizer

BUILTIN_LABEL_NAMES = ["negative", "positive"]
TEST_LANGUAGE_SEED = 0  # one fixed test set for every seed and method, so their accuracies compare


@dataclass
class LabelledSplit:
    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.texts)

    def head(self, n: int) -> "LabelledSplit":
        return LabelledSplit(self.texts[:n], self.labels[:n])


def _check_label(value: Any, num_labels: int, where: str) -> int:
    """An int label in [0, num_labels); "1" (as CSV gives it) counts, 1.5 or "pos" do not."""
    text = str(value).strip()
    if isinstance(value, bool) or not (isinstance(value, int) or text.lstrip("-").isdigit()):
        raise ValueError(f"{where}: label: expected an integer in [0, {num_labels}), got {value!r}")
    label = int(text)
    if not 0 <= label < num_labels:
        raise ValueError(f"{where}: label: expected an integer in [0, {num_labels}), got {label}")
    return label


def _check_row(row: dict, num_labels: int, where: str) -> tuple[str, int]:
    missing = [c for c in ("text", "label") if row.get(c) is None]
    if missing:
        raise ValueError(f"{where}: expected columns 'text' and 'label', missing {missing} (got {sorted(row)})")
    if not isinstance(row["text"], str) or not row["text"].strip():
        raise ValueError(f"{where}: text: expected a non-empty string, got {row['text']!r}")
    return row["text"], _check_label(row["label"], num_labels, where)


def _csv_rows(path: Path, arg: str):
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        if "text" not in header or "label" not in header:
            raise ValueError(f"{arg}: expected a CSV header with columns 'text' and 'label', got {header} "
                             f"in {str(path)!r}")
        for row in reader:
            yield f"{arg} {str(path)!r} row {reader.line_num - 1}", row  # row 1 = the first after the header


def _jsonl_rows(path: Path, arg: str):
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{arg} {str(path)!r} row {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: expected a JSON object, got invalid JSON ({err.msg})") from None
            except RecursionError:
                raise ValueError(f"{where}: expected a JSON object, got JSON nested too deeply to read") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object with 'text' and 'label', got "
                                 f"{type(row).__name__}")
            yield where, row


def read_labelled_file(path: str | Path, num_labels: int, arg: str = "path") -> LabelledSplit:
    """`text,label` rows from a .csv (with a header) or .jsonl / .json file (one object per line)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".json"):
        raise ValueError(f"{arg}: expected a .csv or .jsonl file, got {str(path)!r}")
    if not path.is_file():
        raise ValueError(f"{arg}: expected an existing file, got {str(path)!r}")
    rows = _csv_rows(path, arg) if suffix == ".csv" else _jsonl_rows(path, arg)
    out = LabelledSplit([], [])
    try:
        for where, row in rows:
            text, label = _check_row(row, num_labels, where)
            out.texts.append(text)
            out.labels.append(label)
    except UnicodeDecodeError as err:
        raise ValueError(f"{arg}: expected UTF-8 text, got undecodable bytes in {str(path)!r} at byte "
                         f"{err.start} (a binary file?)") from None
    except csv.Error as err:
        raise ValueError(f"{arg}: {str(path)!r} is not a readable CSV file ({err})") from None
    if not out.texts:
        raise ValueError(f"{arg}: expected at least one labelled row, got none in {str(path)!r}")
    return out


def builtin_splits(n_train: int, n_validation: int, n_test: int, seed: int) -> dict[str, LabelledSplit]:
    """The synthetic sentiment task (docs/data.md): `seed` draws which sentences are labelled; test is fixed.

    Labelled sentences carry no intensifier ("truly kind"): those are pretraining-only polarity cues, so the
    classifier must bring the adjectives' polarity from pretraining (or learn it from the labels).
    """
    lang = SyntheticLanguage(seed, sentiment_cues=False)
    test = SyntheticLanguage(TEST_LANGUAGE_SEED, sentiment_cues=False).sentences(n_test, "test")
    splits = {"train": lang.sentences(n_train, "train"), "validation": lang.sentences(n_validation, "validation"),
              "test": test}
    return {k: LabelledSplit([s.text for s in v], [s.label for s in v]) for k, v in splits.items()}


def subsample(split: LabelledSplit, n: int, seed: int) -> LabelledSplit:
    """`n` rows drawn without replacement by `seed` (all of them when n is 0 or too large)."""
    if not n or n >= len(split):
        return split
    g = torch.Generator().manual_seed(seed_for(seed, 0x5A3B))
    keep = sorted(torch.randperm(len(split), generator=g)[:n].tolist())
    return LabelledSplit([split.texts[i] for i in keep], [split.labels[i] for i in keep])


def load_splits(config) -> dict[str, LabelledSplit]:
    """train / validation / test for a FinetuneConfig. From user files without a validation file, the rows whose
    text hashes outside corpus.split_of's train buckets are held out (stable, about 20%)."""
    if not config.train_file:
        n_train = config.n_train_labels or 256
        return builtin_splits(n_train, config.n_validation, config.n_test, config.seed)
    train = read_labelled_file(config.train_file, config.num_labels, "train_file")
    if config.validation_file:
        validation = read_labelled_file(config.validation_file, config.num_labels, "validation_file")
    else:
        held = [split_of(t) != "train" for t in train.texts]
        validation = LabelledSplit([t for t, h in zip(train.texts, held) if h],
                                   [y for y, h in zip(train.labels, held) if h])
        train = LabelledSplit([t for t, h in zip(train.texts, held) if not h],
                              [y for y, h in zip(train.labels, held) if not h])
        if not len(validation) or not len(train):
            raise ValueError(f"train_file: too few rows ({len(train) + len(validation)}) to hold out a "
                             f"validation split; pass validation_file")
    test = read_labelled_file(config.test_file, config.num_labels, "test_file") if config.test_file else None
    splits = {"train": subsample(train, config.n_train_labels, config.seed), "validation": validation}
    return splits if test is None else {**splits, "test": test}


def encode_split(split: LabelledSplit, tokenizer: WordPieceTokenizer, max_length: int) -> dict[str, torch.Tensor]:
    """{input_ids, attention_mask, token_type_ids (B, N), labels (B,)}, padded to the split's longest example."""
    batch = tokenizer.encode_batch(split.texts, max_length=max_length)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
            "token_type_ids": batch["token_type_ids"], "labels": torch.tensor(split.labels, dtype=torch.long)}


def trim(rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cut the padding columns no row of this batch needs (padding costs attention time, changes nothing)."""
    n = int(rows["attention_mask"].sum(dim=1).max())
    return {k: (v[:, :n] if v.dim() == 2 else v) for k, v in rows.items()}  # (B, N) -> (B, n)


def chunks(encoded: dict[str, torch.Tensor], size: int):
    """The rows in order, `size` at a time, each chunk trimmed: for evaluation."""
    for start in range(0, len(encoded["labels"]), size):
        yield trim({k: v[start:start + size] for k, v in encoded.items()})


def make_batch_fn(encoded: dict[str, torch.Tensor], batch_size: int, seed: int, accum: int = 1) -> Callable:
    """batch_fn(step, micro, rank, world) for train(): epoch after epoch over a fresh permutation seeded by
    (seed, epoch), so micro-batch (t, m) is a pure function of (t, m) and a rerun sees the same batches."""
    n = len(encoded["labels"])
    size = min(batch_size, n)
    cache: dict[int, list[int]] = {}

    def batch_fn(step: int, micro: int, rank: int, world_size: int) -> dict[str, torch.Tensor]:
        first = ((step - 1) * accum + micro) * size  # the micro-batch's first position in the stream
        index = []
        for k in range(first, first + size):
            epoch, offset = divmod(k, n)
            if epoch not in cache:
                g = torch.Generator().manual_seed(seed_for(seed, epoch, 0xF17E))
                cache[epoch] = torch.randperm(n, generator=g).tolist()
            index.append(cache[epoch][offset])
        return trim({k: v[index] for k, v in encoded.items()})
    return batch_fn

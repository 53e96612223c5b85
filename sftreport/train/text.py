"""Text classification data: DIR/train.jsonl and DIR/val.jsonl (or .csv), one example per line with a `text`
and a `label`, tokenised once with the model's tokenizer into fixed-length token-id tensors.

Labels are either all integers (class indices, named by their number) or all strings (class names,
sorted); a file mixing both, a line without `text` or `label`, or a label the training split never has is
refused with one line naming the file and line. Empty lines are skipped. Texts longer than the model's
maximum are truncated, and the count of truncated ones is kept for the report.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sftreport.errors import UserError
from sftreport.train.data import ImageTensors

MAX_TOKENS = 128  # the sequence length when the model allows more (fine-tuning data is rarely longer)


@dataclass
class TextSplit:
    texts: list[str]
    labels: list[Any]  # ints or strings, as read
    path: Path


def read_split(root: Path, split: str) -> TextSplit:
    """ROOT/split.jsonl or ROOT/split.csv."""
    jsonl, csv_path = root / f"{split}.jsonl", root / f"{split}.csv"
    if jsonl.is_file():
        return _read_jsonl(jsonl)
    if csv_path.is_file():
        return _read_csv(csv_path)
    raise UserError(f"text dataset: neither {jsonl} nor {csv_path} exists (each line: a text and its label)")


def _example(row: Any, where: str) -> tuple[str, Any]:
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected an object with 'text' and 'label', found {type(row).__name__}")
    missing = [k for k in ("text", "label") if k not in row or row[k] in (None, "")]
    if missing:
        raise UserError(f"{where}: no {' and no '.join(repr(k) for k in missing)}")
    if not isinstance(row["text"], str):
        raise UserError(f"{where}: 'text' must be a string, found {type(row['text']).__name__}")
    label = row["label"]
    if isinstance(label, bool) or not isinstance(label, (int, str)):
        raise UserError(f"{where}: 'label' must be an integer or a string, found {json.dumps(label)}")
    return row["text"], label


def _read_jsonl(path: Path) -> TextSplit:
    texts, labels = [], []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}, line {number}: not JSON ({e.msg})") from None
        text, label = _example(row, f"{path}, line {number}")
        texts.append(text)
        labels.append(label)
    return TextSplit(texts, labels, path)


def _read_csv(path: Path) -> TextSplit:
    texts, labels = [], []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            for row in reader:
                if not any((v or "").strip() for v in row.values()):
                    continue
                value = row.get("label")
                if isinstance(value, str) and value.strip().lstrip("-").isdigit():
                    row = {**row, "label": int(value)}  # CSV holds strings: integer labels are read as such
                text, label = _example(row, f"{path}, line {reader.line_num}")
                texts.append(text)
                labels.append(label)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    return TextSplit(texts, labels, path)


def class_names(train: TextSplit, val: TextSplit) -> tuple[list[str], dict[Any, int]]:
    """The classes and each label's index: integer labels are their own index, string labels sorted."""
    for split in (train, val):
        kinds = {type(label) for label in split.labels}
        if len(kinds) > 1:
            raise UserError(f"{split.path}: labels mix integers and strings; use one kind for every line")
    if not train.labels:
        raise UserError(f"{train.path} holds no examples")
    index: dict[Any, int]
    if isinstance(train.labels[0], int):
        if min(train.labels) < 0:
            raise UserError(f"{train.path}: integer labels are class indices from 0, found {min(train.labels)}")
        names = [str(i) for i in range(max(train.labels) + 1)]
        index = {i: i for i in range(len(names))}
    else:
        names = sorted(set(train.labels))
        index = {name: i for i, name in enumerate(names)}
    for number, label in enumerate(val.labels, 1):
        if label not in index:
            raise UserError(f"{val.path}: example {number} has label {label!r}, which no training example has")
    return names, index


def tokenize(split: TextSplit, index: dict[Any, int], tokenizer: Any, max_len: int) -> tuple[ImageTensors, int]:
    """Token ids (N, max_len), padded, and the labels; also how many texts were truncated."""
    encoded = tokenizer(split.texts, padding="max_length", truncation=True, max_length=max_len)
    full = tokenizer(split.texts, truncation=False)["input_ids"]
    truncated = sum(len(ids) > max_len for ids in full)
    ids = torch.tensor(encoded["input_ids"], dtype=torch.long)
    labels = torch.tensor([index[label] for label in split.labels], dtype=torch.long)
    return ImageTensors(ids, labels), truncated

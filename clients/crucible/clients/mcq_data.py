"""Multiple-choice questions from the common MMLU file forms: headerless CSV (the original release), headered CSV, JSONL.

Every file is read with bounded sizes; a malformed row is refused with its file, row and column named (DataError).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: Bounds on what a data file may hold before any parsing work (a question file is text of modest size).
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_FIELD_CHARS = 32 * 1024
MAX_OPTIONS = 26
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_SUFFIX = re.compile(r"_(?:test|dev|val|validation|train|auxiliary_train)$")


class DataError(ValueError):
    """A question file that cannot be used; the message names the file, and the row and column when one is at fault."""


def subject_of(path: Path) -> str:
    """The subject a file holds, from its name: `anatomy_test.csv` -> `anatomy`, `philosophy.jsonl` -> `philosophy`."""
    stem = path.name.split(".", 1)[0]
    return _SUFFIX.sub("", stem) or stem


def _answer_index(value: Any, n_options: int, where: str) -> int:
    """An answer given as a 0-based index (int or digit string) or an option letter (A..), checked against the options."""
    if isinstance(value, bool):
        raise DataError(f"{where}: answer must be an option letter or a 0-based index, got {value!r}")
    if isinstance(value, int):
        index = value
    elif isinstance(value, str) and value.strip().isdigit():
        index = int(value.strip())
    elif isinstance(value, str) and len(value.strip()) == 1 and value.strip().upper() in LETTERS:
        index = LETTERS.index(value.strip().upper())
    else:
        raise DataError(f"{where}: answer must be an option letter (A-D) or a 0-based index (0-3), got {value!r}")
    if not 0 <= index < n_options:
        raise DataError(f"{where}: answer {value!r} is outside the {n_options} options")
    return index


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: must be text, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: is empty")
    if len(value) > MAX_FIELD_CHARS:
        raise DataError(f"{where}: longer than {MAX_FIELD_CHARS} characters")
    return value


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise DataError(f"{path}: {size} bytes, more than the {MAX_FILE_BYTES} a question file may have")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def _is_header(row: Sequence[str]) -> bool:
    return bool(row) and row[0].strip().lower() == "question" and row[-1].strip().lower() in ("answer", "label", "target")


def read_csv(path: Path) -> list[tuple[str, tuple[str, ...], int]]:
    """Rows of an MMLU CSV: headerless `question,A,B,C,D,letter` (the original files) or headered
    `question,choice0,...,answer` (answer 0-based or a letter). Row numbers in errors count data rows from 0,
    the index the SECA subset uses."""
    text = _read_text(path)
    csv.field_size_limit(MAX_FIELD_CHARS + 1)
    try:
        rows = [r for r in csv.reader(io.StringIO(text, newline="")) if any(cell.strip() for cell in r)]
    except csv.Error as err:
        raise DataError(f"{path}: not a readable CSV ({err})") from None
    header: list[str] | None = None
    if rows and _is_header(rows[0]):
        header = [c.strip() for c in rows.pop(0)]
    out = []
    for i, row in enumerate(rows):
        where = f"{path} row {i}"
        if header is not None and len(row) != len(header):
            raise DataError(f"{where}: {len(row)} columns, the header has {len(header)}")
        if not 4 <= len(row) <= MAX_OPTIONS + 2:
            raise DataError(f"{where}: {len(row)} columns; expected question, the options, then the answer")
        names = header or ["question", *(f"choice{k}" for k in range(len(row) - 2)), "answer"]
        question = _text(row[0], f"{where} column {names[0]!r}")
        options = tuple(_text(cell, f"{where} column {name!r}") for cell, name in zip(row[1:-1], names[1:-1], strict=True))
        answer = _answer_index(row[-1], len(options), f"{where} column {names[-1]!r}")
        out.append((question, options, answer))
    return out


def read_jsonl(path: Path) -> list[tuple[str, tuple[str, ...], int]]:
    """Rows of a JSONL file: one object a line with `question`, `choices` (a list of texts) and `answer`
    (0-based index or a letter); blank lines are skipped but counted, so row numbers are line numbers from 0."""
    out = []
    for i, line in enumerate(_read_text(path).splitlines()):
        if not line.strip():
            continue
        where = f"{path} row {i}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: not JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(record, dict):
            raise DataError(f"{where}: must be a JSON object with question, choices and answer")
        for key in ("question", "choices", "answer"):
            if key not in record:
                raise DataError(f"{where} column {key!r}: missing")
        choices = record["choices"]
        if not isinstance(choices, list) or not 2 <= len(choices) <= MAX_OPTIONS:
            raise DataError(f"{where} column 'choices': must be a list of 2 to {MAX_OPTIONS} texts")
        question = _text(record["question"], f"{where} column 'question'")
        options = tuple(_text(c, f"{where} column 'choices[{k}]'") for k, c in enumerate(choices))
        out.append((question, options, _answer_index(record["answer"], len(options), f"{where} column 'answer'")))
    return out


def read_questions(path: Path) -> list[tuple[str, tuple[str, ...], int]]:
    """The questions of one file, by its extension (.csv, .jsonl or .json lines)."""
    if path.suffix.lower() == ".csv":
        return read_csv(path)
    if path.suffix.lower() in (".jsonl", ".json"):
        return read_jsonl(path)
    raise DataError(f"{path}: unknown question file type (use .csv or .jsonl)")


def question_files(data: Path) -> dict[str, Path]:
    """Subject -> file: a single file, or every .csv/.jsonl file in a folder (`<subject>_test.csv` as in MMLU)."""
    if data.is_file():
        return {subject_of(data): data}
    if not data.is_dir():
        raise DataError(f"{data}: no such file or folder")
    files = sorted(p for p in data.iterdir() if p.suffix.lower() in (".csv", ".jsonl") and p.is_file())
    tests = [p for p in files if p.name.split(".", 1)[0].endswith("_test")]
    chosen = tests or files  # an MMLU folder also holds dev/val files; the test split is what is attacked
    found: dict[str, Path] = {}
    for path in chosen:
        found.setdefault(subject_of(path), path)
    if not found:
        raise DataError(f"{data}: no question files (<subject>_test.csv, <subject>.csv or <subject>.jsonl)")
    return found


def load_seca_index(folder: Path) -> dict[str, list[int]]:
    """The SECA subset of an MMLU folder: seca_filtered_index.json, subject -> data-row indexes."""
    index_file = folder / "seca_filtered_index.json"
    if not index_file.is_file():
        raise DataError(f"--seca-subset needs {index_file}")
    try:
        subset = json.loads(_read_text(index_file))
    except json.JSONDecodeError as err:
        raise DataError(f"{index_file}: not JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(subset, dict) or not all(
        isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in v) for v in subset.values()
    ):
        raise DataError(f"{index_file}: must map each subject to a list of row indexes")
    return subset

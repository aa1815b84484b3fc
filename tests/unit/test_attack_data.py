"""`crucible attack`'s question files: the original headerless MMLU CSVs, the headered form and JSONL all load to the
same questions; a malformed row is refused with its file, row and column named, never a traceback (issue 23).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from crucible.clients.attack import load_mmlu
from crucible.clients.mcq_data import DataError

ROWS = [
    ("What is 2 + 2?", ("3", "4", "5", "6"), 1),
    ('A "quoted", comma question', ("a", "b, c", "d", "e"), 3),
]


def _headerless(path):
    import csv

    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        for question, options, answer in ROWS:
            writer.writerow([question, *options, "ABCD"[answer]])


def test_headerless_headered_and_jsonl_give_the_same_questions(tmp_path):
    import csv

    (tmp_path / "plain").mkdir()
    _headerless(tmp_path / "plain" / "math_test.csv")
    (tmp_path / "headered").mkdir()
    with (tmp_path / "headered" / "math_test.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["question", "choice0", "choice1", "choice2", "choice3", "answer"])
        for k, (question, options, answer) in enumerate(ROWS):
            writer.writerow([question, *options, answer if k == 0 else "ABCD"[answer]])  # 0-3 or a letter
    (tmp_path / "jsonl").mkdir()
    (tmp_path / "jsonl" / "math.jsonl").write_text(
        "\n".join(json.dumps({"question": q, "choices": list(o), "answer": a}) for q, o, a in ROWS) + "\n"
    )
    loaded = [load_mmlu(tmp_path / name) for name in ("plain", "headered", "jsonl")]
    for questions in loaded:
        assert [(q.qid, q.subject, q.question, q.options, q.answer) for q in questions] == [
            (f"math/{i}", "math", question, options, answer) for i, (question, options, answer) in enumerate(ROWS)
        ]
    assert load_mmlu(tmp_path / "plain" / "math_test.csv") == loaded[0]  # a single file works too


def test_seca_subset_indexes_data_rows_of_headerless_files(tmp_path):
    _headerless(tmp_path / "math_test.csv")
    (tmp_path / "seca_filtered_index.json").write_text(json.dumps({"math": [1]}))
    (question,) = load_mmlu(tmp_path, seca_subset=True)
    assert question.qid == "math/1" and question.answer == 3


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("What?,a,b,c,d,AB\n", "row 0 column 'answer': answer must be"),
        ("What?,a,b,c,d,A\nWhy?,a,,c,d,B\n", "row 1 column 'choice1': is empty"),
        ("question,choice0,choice1,choice2,choice3,answer\nWhat?,a,b,c,d,7\n", "row 0 column 'answer': answer '7' is outside"),
        ("question,choice0,choice1,choice2,choice3,answer\nWhat?,a,b,c\n", "row 0: 4 columns, the header has 6"),
        ("What?,a\n", "row 0: 2 columns"),
    ],
)
def test_a_malformed_csv_row_is_named(tmp_path, content, expected):
    (tmp_path / "bad_test.csv").write_text(content)
    with pytest.raises(DataError, match="bad_test.csv " + expected.replace("(", r"\(").replace("?", r"\?")):
        load_mmlu(tmp_path)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"question": "Q?", "choices": ["a", "b"]}', "row 1 column 'answer': missing"),
        ('{"question": "Q?", "choices": "ab", "answer": 0}', "row 1 column 'choices': must be a list"),
        ('{"question": 3, "choices": ["a", "b"], "answer": 0}', "row 1 column 'question': must be text"),
        ("not json", "row 1: not JSON"),
    ],
)
def test_a_malformed_jsonl_row_is_named(tmp_path, line, expected):
    good = json.dumps({"question": "Q?", "choices": ["a", "b"], "answer": "B"})
    (tmp_path / "bad.jsonl").write_text(good + "\n" + line + "\n")
    with pytest.raises(DataError, match=expected):
        load_mmlu(tmp_path)


def test_the_cli_names_the_bad_row_without_a_traceback(tmp_path):
    (tmp_path / "bad_test.csv").write_text("What?,a,b,c,d,Z\n")
    done = subprocess.run(
        [sys.executable, "-m", "crucible", "attack", "--data", str(tmp_path), "--base-port", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "bad_test.csv row 0 column 'answer'" in done.stderr and "Traceback" not in done.stderr


def test_builtin_questions_need_no_data_folder_and_filter_by_subject():
    import argparse

    from crucible.clients.cli import _attack_questions

    args = argparse.Namespace(builtin=True, data=None, subjects=["astronomy"], seca_subset=False, limit_per_subject=None)
    (question,) = _attack_questions(args)
    assert question.question == "Which planet is known as the Red Planet?"
    with pytest.raises(DataError, match="no built-in question has subject"):
        _attack_questions(argparse.Namespace(**{**vars(args), "subjects": ["law"]}))
    with pytest.raises(DataError, match="--seca-subset needs --data"):
        _attack_questions(argparse.Namespace(**{**vars(args), "seca_subset": True}))

"""bench/question_equivalence.py draws the questions to generate for (issue 23): held-out batches must never redraw a
question already labelled (--exclude), and --builtin uses the demo's questions, of subjects the MMLU files lack.
"""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "question_equivalence.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("question_equivalence_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _write(folder: Path, subject: str, questions: list[str]) -> None:
    with (folder / f"{subject}_test.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["question", "choice0", "choice1", "choice2", "choice3", "answer"])
        for q in questions:
            writer.writerow([q, "a", "b", "c", "d", 1])


def test_excluded_questions_are_never_drawn(bench, tmp_path):
    _write(tmp_path, "anatomy", [f"Anatomy question {k}?" for k in range(6)])
    _write(tmp_path, "philosophy", [f"Philosophy question {k}?" for k in range(6)])
    labelled = {f"Anatomy question {k}?" for k in range(4)}
    for seed in range(20):
        drawn = bench._questions(tmp_path, 2, seed, 400, [], labelled)
        anatomy = {q["question"] for q in drawn if q["subject"] == "anatomy"}
        assert anatomy == {"Anatomy question 4?", "Anatomy question 5?"}  # only the two never labelled
        assert sum(q["subject"] == "philosophy" for q in drawn) == 2
    assert all(q["choices"] == ["a", "b", "c", "d"] and q["answer"] == 1 for q in drawn)


def test_builtin_draw_is_the_demo_questions_minus_the_excluded(bench):
    from crucible.demo import ATTACK_SAMPLES

    everything = bench._questions(None, 2, 0, 400, [], set())
    assert [q["question"] for q in everything] == [q.question for q in ATTACK_SAMPLES]
    first = ATTACK_SAMPLES[0]
    rest = bench._questions(None, 2, 0, 400, [], {first.question})
    assert first.question not in {q["question"] for q in rest} and len(rest) == len(ATTACK_SAMPLES) - 1
    only = bench._questions(None, 2, 0, 400, [first.subject], set())
    assert {q["subject"] for q in only} == {first.subject}

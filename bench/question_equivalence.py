"""Question-equivalence benchmark: generate real EQUIVALENT_QUESTION candidates from MMLU-format questions with the
proposer's own engine, and measure precision/recall of "equivalent" per meaning-check method on the labelled set.

`generate` writes unlabelled pairs (JSONL); `evaluate` reads tests/data/question_equivalence_real.jsonl.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import random
import sys
from pathlib import Path

from crucible.proposer import cleaning, prompts
from crucible.proposer.config import ProposerConfig
from crucible.proposer.engine import ProposerEngine
from crucible.proposer.requests import ProposeSpec
from crucible.runtime.config import load_config


def _questions(data: Path, per_subject: int, seed: int, max_chars: int, subjects: list[str]) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for path in sorted(data.glob("*_test.csv")):
        subject = path.name[: -len("_test.csv")]
        if subjects and subject not in subjects:
            continue
        with path.open(newline="", encoding="utf-8") as handle:
            rows = [r for r in csv.DictReader(handle) if len(r["question"]) <= max_chars]
        for row in rng.sample(rows, min(per_subject, len(rows))):
            out.append(
                {
                    "subject": subject,
                    "question": row["question"],
                    "choices": [row[f"choice{k}"] for k in range(4)],
                    "answer": int(row["answer"]),
                }
            )
    return out


async def _generate(args: argparse.Namespace) -> int:
    config = load_config(
        ProposerConfig,
        "proposer",
        env={},
        port=0,
        metrics_enabled=False,
        device="cpu",
        dtype="float32",
        question_filter=False,  # every cleaned candidate is written; the content check is what is measured
    )
    engine = ProposerEngine(config)
    await engine.start()
    seen: list = []
    original_collect = engine.collect_candidates

    def collect(spec, prompt, seed, generated, *rest):  # keep the raw rows too: dropped candidates are labelled as well
        seen.append(generated)
        return original_collect(spec, prompt, seed, generated, *rest)

    engine.collect_candidates = collect  # type: ignore[method-assign]
    questions = _questions(args.data, args.per_subject, args.seed, args.max_chars, args.subjects)
    tokenizer = engine.generator.tokenizer
    with args.out.open("w", encoding="utf-8") as out:
        for k, q in enumerate(questions):
            spec = ProposeSpec(
                q["question"],
                prompts.MODE_EQUIVALENT_QUESTION,
                n=args.n,
                temperature=args.temperature,
                seed=args.seed + k,
                options=tuple(q["choices"]),
                correct_option_index=q["answer"],
            )
            seen.clear()
            await engine.propose(spec)
            for row in seen[0]:
                raw = tokenizer.decode(list(row.token_ids), skip_special_tokens=True)
                cleaned = cleaning.clean_question(raw, source=q["question"], options=q["choices"])
                if cleaned.outcome in (cleaning.EMPTY, cleaning.DEGENERATE):
                    continue
                record = {**q, "candidate": cleaned.text, "cleaning": cleaned.outcome}
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            print(f"{k + 1}/{len(questions)} {q['subject']}", file=sys.stderr, flush=True)
    await engine.stop()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="real candidates of the proposer for MMLU-format questions")
    gen.add_argument("--data", type=Path, required=True)
    gen.add_argument("--out", type=Path, required=True)
    gen.add_argument("--per-subject", type=int, default=8)
    gen.add_argument("--n", type=int, default=8)
    gen.add_argument("--temperature", type=float, default=0.7)
    gen.add_argument("--seed", type=int, default=23)
    gen.add_argument("--max-chars", type=int, default=400)
    gen.add_argument("--subjects", nargs="*", default=[], help="default: every <subject>_test.csv in --data")
    args = parser.parse_args()
    if args.command == "generate":
        return asyncio.run(_generate(args))
    return 2


if __name__ == "__main__":
    sys.exit(main())

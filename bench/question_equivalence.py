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
from crucible.runtime.errors import DeadlineExceeded


def _questions(
    data: Path | None, per_subject: int, seed: int, max_chars: int, subjects: list[str], exclude: set[str]
) -> list[dict]:
    """`per_subject` questions drawn from each <subject>_test.csv (headered MMLU form) in `data`, or the demo's built-in
    questions when `data` is None; questions in `exclude` (already labelled) are never drawn."""
    if data is None:
        from crucible.demo import ATTACK_SAMPLES

        return [
            {"subject": q.subject, "question": q.question, "choices": list(q.options), "answer": q.answer}
            for q in ATTACK_SAMPLES
            if q.question not in exclude and (not subjects or q.subject in subjects)
        ]
    rng = random.Random(seed)
    out = []
    for path in sorted(data.glob("*_test.csv")):
        subject = path.name[: -len("_test.csv")]
        if subjects and subject not in subjects:
            continue
        with path.open(newline="", encoding="utf-8") as handle:
            rows = [r for r in csv.DictReader(handle) if len(r["question"]) <= max_chars and r["question"] not in exclude]
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
    exclude = set()
    for path in args.exclude:
        exclude |= {json.loads(line)["original"] for line in path.read_text(encoding="utf-8").splitlines() if line}
    data = None if args.builtin else args.data
    questions = _questions(data, args.per_subject, args.seed, args.max_chars, args.subjects, exclude)
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
            try:
                await asyncio.wait_for(engine.propose(spec, timeout=args.question_timeout), args.question_timeout + 30)
            except (TimeoutError, DeadlineExceeded) as err:
                print(f"{k + 1}/{len(questions)} {q['subject']}: skipped ({type(err).__name__})", file=sys.stderr)
                continue
            for row in seen[0]:
                raw = tokenizer.decode(list(row.token_ids), skip_special_tokens=True)
                cleaned = cleaning.clean_question(raw, source=q["question"], options=q["choices"])
                if cleaned.outcome in (cleaning.EMPTY, cleaning.DEGENERATE):
                    continue
                record = {
                    "subject": q["subject"],
                    "original": q["question"],
                    "choices": q["choices"],
                    "answer": q["answer"],
                    "candidate": cleaned.text,
                    "cleaning": cleaned.outcome,
                }
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            print(f"{k + 1}/{len(questions)} {q['subject']}", file=sys.stderr, flush=True)
    await engine.stop()
    return 0


def _features(rows: list[dict], judge_model: str) -> list[dict]:
    """Per pair: the form check, MiniLM cosine, the content alignment and (when asked) the LLM judge both orders."""
    import torch

    from crucible.models import embed, load_causal_lm, load_embedding_model
    from crucible.proposer import alignment, judge

    embedder = load_embedding_model("minilm-l6-v2", device="cpu", dtype="float32")
    texts = sorted({t for r in rows for t in (r["original"], r["candidate"])})
    vectors = dict(zip(texts, embed(embedder, texts), strict=True))
    words = dict(zip(texts, alignment.word_vectors(embedder, texts), strict=True))
    judged: list[tuple[float, float]] = []
    if judge_model:
        loaded = load_causal_lm(judge_model, device="cpu", dtype="float32")
        pad = loaded.tokenizer.pad_token_id or 0
        pairs = [(r["original"], r["candidate"]) for r in rows]
        forward = judge.judge_probabilities(loaded, pairs, pad_token_id=pad)
        backward = judge.judge_probabilities(loaded, [(b, a) for a, b in pairs], pad_token_id=pad)
        judged = list(zip(forward, backward, strict=True))
    out = []
    for k, r in enumerate(rows):
        a = alignment.align(words[r["original"]], words[r["candidate"]], 0.5)
        form, _ = cleaning.question_problem(r["candidate"], r["original"], r.get("choices", ()), near_copy=False)
        feature = {
            "form_ok": not form,
            "cosine": float(torch.dot(vectors[r["original"]], vectors[r["candidate"]])),
            "content": a.score,
            "recall": a.recall,
            "precision": a.precision,
        }
        if judged:
            feature["judge"] = min(judged[k])
        out.append({**r, "features": feature})
    return out


#: Methods measured: name -> (decision given features and a threshold, the threshold's default, fitted?).
METHODS = {
    "cosine >= 0.7 (no form checks)": (lambda f, t: f["cosine"] >= t, 0.7, False),
    "old default: form + cosine >= 0.7": (lambda f, t: f["form_ok"] and f["cosine"] >= t, 0.7, False),
    "form + cosine (threshold fitted)": (lambda f, t: f["form_ok"] and f["cosine"] >= t, 0.7, True),
    "form + BERTScore-style mean recall/precision": (
        lambda f, t: f["form_ok"] and f["cosine"] >= 0.7 and min(f["recall"], f["precision"]) >= t,
        0.9,
        True,
    ),
    "new default: form + content alignment + cosine >= 0.7": (
        lambda f, t: f["form_ok"] and f["cosine"] >= 0.7 and f["content"] >= t,
        0.5,
        True,
    ),
    "attack's flip verification: default with content alignment >= 0.7": (
        lambda f, t: f["form_ok"] and f["cosine"] >= 0.7 and f["content"] >= t,
        0.7,
        False,
    ),
    "LLM judge (SmolLM2-135M), both orders": (lambda f, t: "judge" in f and f["judge"] >= t, 0.5, False),
}


def _score(rows: list[dict], decide, threshold: float) -> tuple[int, int, int]:
    """(true positives, accepted, positives) of `decide` at `threshold`."""
    accepted = [r for r in rows if decide(r["features"], threshold)]
    tp = sum(r["label"] == "equivalent" for r in accepted)
    return tp, len(accepted), sum(r["label"] == "equivalent" for r in rows)


def _fit(rows: list[dict], decide, grid: list[float]) -> float:
    """The threshold with the best recall at precision >= 0.9 on `rows` (ties: the stricter one); else the strictest."""
    best = (-1.0, grid[-1])
    for t in grid:
        tp, accepted, positives = _score(rows, decide, t)
        precision = tp / accepted if accepted else 1.0
        if precision >= 0.9 and positives and tp / positives > best[0]:
            best = (tp / positives, t)
    return best[1]


def _evaluate(args: argparse.Namespace) -> int:
    rows = [json.loads(line) for line in args.data.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = _features(rows, args.judge_model)
    grid = [round(0.30 + 0.01 * k, 2) for k in range(70)]
    subjects = sorted({r["subject"] for r in rows})
    print(f"{len(rows)} pairs, {sum(r['label'] == 'equivalent' for r in rows)} equivalent, {len(subjects)} subjects")
    print("| method | threshold | precision | recall | accepted | cross-validated precision | recall |")
    print("|---|---|---|---|---|---|---|")
    for name, (decide, default, fitted) in METHODS.items():
        if "judge" in name and not args.judge_model:
            print(f"| {name} | - | not run | | | | |")
            continue
        tp, accepted, positives = _score(rows, decide, default)
        cells = [f"{default:g}", f"{tp / accepted:.2f}" if accepted else "-", f"{tp / positives:.2f}", f"{tp}/{accepted}"]
        if fitted:  # leave one subject out: fit on the others, count on it
            cv_tp = cv_accepted = 0
            for subject in subjects:
                threshold = _fit([r for r in rows if r["subject"] != subject], decide, grid)
                held = [r for r in rows if r["subject"] == subject]
                a, b, _ = _score(held, decide, threshold)
                cv_tp, cv_accepted = cv_tp + a, cv_accepted + b
            cells += [f"{cv_tp / cv_accepted:.2f}" if cv_accepted else "-", f"{cv_tp / positives:.2f}"]
        else:
            cells += ["(not fitted)", ""]
        print(f"| {name} | " + " | ".join(cells) + " |")
    decide, default, _ = METHODS["new default: form + content alignment + cosine >= 0.7"]
    for batch in sorted({r.get("batch", "") for r in rows}):  # the held-out batches apart from the set it was built on
        tp, accepted, positives = _score([r for r in rows if r.get("batch", "") == batch], decide, default)
        precision = f"{tp / accepted:.2f}" if accepted else "-"
        print(f"default check on {batch or 'the first set'}: precision {precision} ({tp}/{accepted}), recall {tp}/{positives}")
    if args.features_out:
        args.features_out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="real candidates of the proposer for MMLU-format questions")
    source = gen.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="a folder of headered <subject>_test.csv files")
    source.add_argument("--builtin", action="store_true", help="the demo's built-in questions (other subjects)")
    gen.add_argument(
        "--exclude", type=Path, nargs="*", default=[], help="labelled JSONL sets whose originals are not drawn again"
    )
    gen.add_argument("--out", type=Path, required=True)
    gen.add_argument("--per-subject", type=int, default=8)
    gen.add_argument("--n", type=int, default=8)
    gen.add_argument("--temperature", type=float, default=0.7)
    gen.add_argument("--seed", type=int, default=23)
    gen.add_argument("--max-chars", type=int, default=400)
    gen.add_argument("--subjects", nargs="*", default=[], help="default: every <subject>_test.csv in --data")
    gen.add_argument("--question-timeout", type=float, default=300.0, help="seconds per question before it is skipped")
    ev = sub.add_parser("evaluate", help="precision/recall of 'equivalent' per method on a labelled set")
    ev.add_argument("--data", type=Path, default=Path("tests/data/question_equivalence_real.jsonl"))
    ev.add_argument("--judge-model", default="", help="also run the LLM judge with this model (alias or folder)")
    ev.add_argument("--features-out", type=Path, default=None)
    args = parser.parse_args()
    if args.command == "generate":
        return asyncio.run(_generate(args))
    return _evaluate(args)


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark of the target scorer: SECA/MMLU prompts scored per second, side by side, measured in one run.

(a) the bare batched forward pass, (b) a per-item loop, (c) the gRPC service under concurrent clients; then the two
ways to score multi-token choices (one cached pass for the choice tokens vs one full row per choice).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import grpc
import torch

from crucible.api.scorer.v1 import scorer_service_pb2 as pb
from crucible.api.scorer.v1 import scorer_service_pb2_grpc as pb_grpc
from crucible.clients.tables import format_table
from crucible.models import load_causal_lm
from crucible.runtime.config import load_config
from crucible.scorer.config import ScorerConfig
from crucible.scorer.placement import apply_cpu_placement
from crucible.scorer.scoring import ChoiceRequest, Limits, TargetScorer
from crucible.scorer.seca import McqQuestion, read_seca_subset
from crucible.scorer.server import create_server

SHARED_MMLU = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "mmlu"

SAMPLE_QUESTIONS = [
    McqQuestion(
        "anatomy",
        "Which of the following best describes the structure that collects urine in the body?",
        ("Bladder", "Kidney", "Ureter", "Urethra"),
        0,
    ),
    McqQuestion(
        "high_school_psychology",
        "Which of the following is a common symptom of major depressive disorder?",
        (
            "Persistent low mood and loss of interest",
            "Hallucinations of voices",
            "A phobia of open spaces",
            "Compulsive hand washing",
        ),
        0,
    ),
    McqQuestion(
        "college_physics",
        "A ball is dropped from rest. Ignoring air resistance, its speed after 2 s is about",
        ("5 m/s", "10 m/s", "20 m/s", "40 m/s"),
        2,
    ),
    McqQuestion(
        "computer_security",
        "Which of the following is a property that a cryptographic hash function should have?",
        (
            "It is easy to invert",
            "It is collision resistant",
            "Its output length equals its input length",
            "It requires a secret key",
        ),
        1,
    ),
    McqQuestion(
        "philosophy",
        "According to Descartes, which of the following can he not doubt?",
        ("That he has a body", "That the external world exists", "That he exists while he thinks", "That God is a deceiver"),
        2,
    ),
    McqQuestion("abstract_algebra", "Find the order of the element 3 in the additive group Z_12.", ("3", "4", "6", "12"), 1),
    McqQuestion(
        "conceptual_physics",
        "When you double the speed of a moving object, its kinetic energy",
        ("stays the same", "doubles", "triples", "quadruples"),
        3,
    ),
    McqQuestion(
        "high_school_us_history",
        "The Louisiana Purchase of 1803 was made from which country?",
        ("Spain", "Britain", "France", "Mexico"),
        2,
    ),
]


def load_questions(count: int) -> tuple[list[McqQuestion], str]:
    """`count` questions: the SECA paper's MMLU subset when ../shared/data/mmlu is present, else the built-in samples."""
    if (SHARED_MMLU / "seca_filtered_index.json").is_file():
        pool = [q for questions in read_seca_subset(SHARED_MMLU).values() for q in questions]
        source = f"SECA subset of ../shared/data/mmlu ({len(pool)} questions)"
    else:
        pool = SAMPLE_QUESTIONS
        source = f"{len(pool)} built-in sample questions (../shared/data/mmlu absent)"
    return [pool[i % len(pool)] for i in range(count)], source


def bare_forward(scorer: TargetScorer, jobs: list, batch_size: int) -> float:
    """Seconds for the model forward passes alone over pre-tokenised, left-padded prompts (last-position logits).

    Prompts are sorted by length first, so each batch holds similar lengths: the least padding a plain loop can get.
    """
    model = scorer.model
    jobs = sorted(jobs, key=lambda job: len(job.prompt_ids))
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(jobs), batch_size):
            rows = [job.prompt_ids for job in jobs[start : start + batch_size]]
            width = max(map(len, rows))
            ids = torch.full((len(rows), width), scorer.pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, row in enumerate(rows):
                ids[i, width - len(row) :] = torch.tensor(row)
                mask[i, width - len(row) :] = 1
            model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                logits_to_keep=1,
                use_cache=False,
            )
    return time.perf_counter() - started


def per_item_loop(scorer: TargetScorer, requests: list[ChoiceRequest]) -> tuple[float, list]:
    """Seconds to score the items one at a time with the same core (tokenise + one forward each)."""
    started = time.perf_counter()
    results = [scorer.score_choices([scorer.prepare_choices([r])[0].job])[0] for r in requests]
    return time.perf_counter() - started, results


def rows_per_choice(scorer: TargetScorer, jobs: list, batch_size: int) -> float:
    """Seconds to score multi-token choices the plain way: one full prompt+choice row per choice, no cache reuse."""
    rows = [(job.prompt_ids, c) for job in jobs for c in job.choice_ids]
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            part = rows[start : start + batch_size]
            seqs = [p + c for p, c in part]
            width = max(map(len, seqs))
            ids = torch.full((len(seqs), width), scorer.pad_id, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for i, seq in enumerate(seqs):
                ids[i, width - len(seq) :] = torch.tensor(seq)
                mask[i, width - len(seq) :] = 1
            keep = max(len(c) for _, c in part) + 1
            logits = scorer.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                logits_to_keep=keep,
                use_cache=False,
            ).logits
            logits.float().log_softmax(-1)
    return time.perf_counter() - started


async def run_modes(
    config: ScorerConfig, scorer: TargetScorer, questions: list[McqQuestion], args: argparse.Namespace
) -> dict[str, tuple[float, list]]:
    """Best seconds (and results) of each mode over `args.repeats` rounds, the modes interleaved in every round so
    that a change in machine load hits them alike: bare forward, per-item loop, service with concurrent clients."""
    requests = [ChoiceRequest(question=q) for q in questions]
    jobs = [p.job for p in scorer.prepare_choices(requests)]
    server, _ = create_server(config)
    await server.start()
    await server.wait_ready(300)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.ScorerServiceStub(channel)
            calls = [questions[i : i + args.per_call] for i in range(0, len(questions), args.per_call)]

            def item(q: McqQuestion) -> pb.ChoiceItem:
                return pb.ChoiceItem(question=pb.McqQuestion(subject=q.subject, question=q.question, options=q.options))

            async def service() -> tuple[float, list]:
                results: list = [None] * len(calls)
                queue: asyncio.Queue[int] = asyncio.Queue()
                for index in range(len(calls)):
                    queue.put_nowait(index)

                async def client() -> None:
                    while not queue.empty():
                        index = queue.get_nowait()
                        request = pb.ScoreChoicesRequest(items=[item(q) for q in calls[index]])
                        results[index] = (await stub.ScoreChoices(request, timeout=600)).results

                started = time.perf_counter()
                await asyncio.gather(*(client() for _ in range(args.clients)))
                return time.perf_counter() - started, [r for part in results for r in part]

            await stub.ScoreChoices(pb.ScoreChoicesRequest(items=[item(q) for q in calls[0]]), timeout=300)  # warm
            bare_forward(scorer, jobs[: min(8, len(jobs))], args.batch_size)  # warm
            best: dict[str, tuple[float, list]] = {}
            for _ in range(args.repeats):
                runs = {
                    "bare": (bare_forward(scorer, jobs, args.batch_size), []),
                    "loop": per_item_loop(scorer, requests),
                    "service": await service(),
                }
                for mode, run in runs.items():
                    if mode not in best or run[0] < best[mode][0]:
                        best[mode] = run
        return best
    finally:
        await server.stop(0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--questions", type=int, default=64, help="questions per mode (default 64)")
    parser.add_argument(
        "--dtype",
        default=ScorerConfig.dtype,
        choices=("auto", "float32", "bfloat16"),
        help=f"target dtype (default {ScorerConfig.dtype}, the service default)",
    )
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--clients", type=int, default=8, help="concurrent service clients")
    parser.add_argument("--per-call", type=int, default=4, help="questions per ScoreChoices call")
    parser.add_argument("--batch-size", type=int, default=32, help="service max_batch_size and bare batch size")
    parser.add_argument("--repeats", type=int, default=2, help="runs per mode; the best is reported (default 2)")
    parser.add_argument("--multi-token-questions", type=int, default=12, help="questions for the multi-token comparison")
    args = parser.parse_args()

    config = load_config(
        ScorerConfig,
        "scorer",
        env={},
        port=0,
        metrics_enabled=False,
        model=args.model,
        dtype=args.dtype,
        max_batch_size=args.batch_size,
        max_items_per_call=max(args.per_call, 1),
    )
    placement = apply_cpu_placement(config.core_list, config.threads, config.interop_threads)
    loaded = load_causal_lm(args.model, device="cpu", dtype=args.dtype)
    scorer = TargetScorer(
        loaded.model, loaded.tokenizer, Limits(max_tokens=config.max_tokens), model_max_length=loaded.max_length
    )
    questions, source = load_questions(args.questions)
    requests = [ChoiceRequest(question=q) for q in questions]
    jobs = [p.job for p in scorer.prepare_choices(requests)]
    tokens = sum(len(j.prompt_ids) for j in jobs) / len(jobs)
    print(
        f"model {loaded.identity.name} ({loaded.identity.dtype}, {loaded.num_parameters / 1e6:.0f}M params) on "
        f"{len(placement.cores)} cores, {placement.intra_op_threads} threads; {source}; "
        f"{len(questions)} prompts, mean {tokens:.0f} tokens, 4 letter choices each",
        flush=True,
    )

    best = asyncio.run(run_modes(config, scorer, questions, args))
    bare_s, loop_s, service_s = best["bare"][0], best["loop"][0], best["service"][0]
    worst = max(
        abs(a - b)
        for s, r in zip(best["service"][1], best["loop"][1], strict=True)
        for a, b in zip((c.logprob for c in s.choices), r.logprobs, strict=True)
    )

    n = len(questions)
    rows = [
        ("bare batched forward, length-sorted (no tokenising, no gRPC)", f"{n / bare_s:.2f}", "1.00"),
        ("per-item loop (core, one forward per prompt)", f"{n / loop_s:.2f}", f"{bare_s / loop_s:.2f}"),
        (
            f"service, {args.clients} clients x {args.per_call} questions/call",
            f"{n / service_s:.2f}",
            f"{bare_s / service_s:.2f}",
        ),
    ]
    print(format_table(("mode", "prompts/s", "x bare"), rows))
    print(
        f"best of {args.repeats} interleaved rounds; service vs per-item loop: max |logprob difference| {worst:.2e} "
        "(target: service >= 0.85 x bare)"
    )

    # multi-token choices: the four option texts as choices
    distinct = [q for q in questions if len(set(q.options)) == len(q.options)]
    multi = [ChoiceRequest(question=q, choices=tuple(" " + o for o in q.options)) for q in distinct[: args.multi_token_questions]]
    multi_jobs = [p.job for p in scorer.prepare_choices(multi)]
    choice_tokens = sum(len(c) for j in multi_jobs for c in j.choice_ids) / (4 * len(multi_jobs))
    scorer.score_choices(multi_jobs[:2])  # warm-up
    cached_s = rows_s = float("inf")
    for _ in range(args.repeats):
        started = time.perf_counter()
        for start in range(0, len(multi_jobs), args.batch_size):
            scorer.score_choices(multi_jobs[start : start + args.batch_size])
        cached_s = min(cached_s, time.perf_counter() - started)
        rows_s = min(rows_s, rows_per_choice(scorer, multi_jobs, args.batch_size))
    m = len(multi_jobs)
    print(f"\nmulti-token choices ({m} prompts x 4 option texts, mean {choice_tokens:.1f} tokens per choice):")
    print(
        format_table(
            ("method", "prompts/s", "x rows"),
            [
                (
                    "one prompt pass + cached pass over choice tokens (the scorer)",
                    f"{m / cached_s:.2f}",
                    f"{rows_s / cached_s:.2f}",
                ),
                ("one full prompt+choice row per choice (bare forward only)", f"{m / rows_s:.2f}", "1.00"),
            ],
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`crucible reward` and `crucible attack`: the reward loop and the SECA attack loop from the command line.

Both talk to a running mesh (`crucible up`); addresses come from CRUCIBLE_<SVC>_ADDRESS or --base-port.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

from crucible.clients.attack import AttackConfig, SecaAttack, Trace, load_mmlu, summarize
from crucible.clients.channel import CLI_SERVICES, add_connection_arguments, cli_channel_config
from crucible.clients.mcq_data import DataError
from crucible.clients.mesh import Mesh, MeshConfig
from crucible.clients.reward import COMPONENTS, CompositeReward, RewardConfig


def add_commands(sub: Any) -> None:
    """Register `reward` and `attack` on the crucible CLI."""
    reward = sub.add_parser("reward", help="composite paraphrase reward over the mesh for (original, rewrite) pairs")
    reward.add_argument(
        "--data",
        type=Path,
        required=True,
        help="JSONL lines {original, completions:[...]} or {original, completion}; or a detect-format JSON "
        "{original:[...], sampled:[...]} scored pairwise",
    )
    reward.add_argument("--base-port", type=int, default=None, help="mesh started with `crucible up --base-port N`")
    reward.add_argument(
        "--signal",
        choices=("probability", "criterion"),
        default="criterion",
        help="detector component: calibrated 1-P(machine), or the logistic of the criterion (default: "
        "criterion, which works for uncalibrated model pairs)",
    )
    reward.add_argument("--limit", type=int, default=None, help="score at most N pairs")
    reward.add_argument("--json", action="store_true", help="print one JSON object per pair instead of a table")
    add_connection_arguments(reward, address=False)
    reward.set_defaults(handler=_reward)

    attack = sub.add_parser("attack", help="SECA-style attack on MMLU-format questions over the mesh")
    source = attack.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--data",
        type=Path,
        help="a question file or a folder of them: MMLU CSVs (the original headerless question,A,B,C,D,letter files "
        "or headered question,choice0,choice1,choice2,choice3,answer with 0-3 or A-D), or JSONL lines "
        '{"question": ..., "choices": [...], "answer": 0-3 or A-D}; the subject is the file name without _test',
    )
    source.add_argument("--builtin", action="store_true", help="the demo's built-in general-knowledge questions (no data needed)")
    attack.add_argument("--subjects", nargs="*", default=[], help="subjects to attack (default: all in the folder)")
    attack.add_argument("--seca-subset", action="store_true", help="only the SECA paper's questions (seca_filtered_index.json)")
    attack.add_argument("--limit-per-subject", type=int, default=None)
    attack.add_argument("--iterations", type=int, default=30)
    attack.add_argument("--parallel", type=int, default=3, help="questions attacked concurrently")
    attack.add_argument(
        "--trace",
        type=Path,
        default=Path("attack-trace.jsonl"),
        help="JSONL trace of every candidate; an existing trace is resumed (finished questions skipped)",
    )
    attack.add_argument(
        "--equivalence",
        choices=("question", "embedding", "nli", "judge"),
        default="question",
        help="meaning check in the search: question (form checks and content alignment, then NLI if configured, else "
        "cosine; default), embedding, nli or judge (the proposer's --judge-model) alone",
    )
    attack.add_argument(
        "--oversample",
        type=int,
        default=AttackConfig.oversample,
        help="each parent samples candidates x N rewrites and scores the first survivors of the proposer's checks "
        f"(default {AttackConfig.oversample}; 2-3 gives more valid candidates per iteration for little extra time)",
    )
    attack.add_argument(
        "--verify",
        default="strictest",
        help="checks a flip's final question must also pass to count as a success: strictest (the question check, plus "
        "the LLM judge when the proposer has one; default), a comma-separated list of methods, or '' for none",
    )
    attack.add_argument(
        "--verify-content-threshold",
        type=float,
        default=AttackConfig.verify_content_threshold,
        help="content-alignment bar of the question check when it verifies a flip (default "
        f"{AttackConfig.verify_content_threshold}; the search itself uses the proposer's, 0.5)",
    )
    attack.add_argument(
        "--temperature",
        type=float,
        default=AttackConfig.temperature,
        help=f"proposer sampling temperature (default {AttackConfig.temperature}; the paper uses 1.0)",
    )
    attack.add_argument("--threshold", type=float, default=None, help="equivalence threshold (default: the proposer's)")
    attack.add_argument("--seed", type=int, default=0)
    attack.add_argument("--base-port", type=int, default=None)
    attack.add_argument("--json", action="store_true", help="print the summary as one JSON object instead of a table")
    add_connection_arguments(attack, address=False)
    attack.set_defaults(handler=_attack)


def _mesh(args: argparse.Namespace) -> Mesh:
    """The SDK mesh from the client config (TOML/env) and the connection flags; --base-port sets local addresses."""
    configs = {}
    for i, name in enumerate(CLI_SERVICES):
        config = cli_channel_config(name, args)
        if args.base_port is not None:
            config = dataclasses.replace(config, addresses=(f"127.0.0.1:{args.base_port + i}",))
        configs[name] = config
    return Mesh(MeshConfig(configs))


def _pairs(path: Path) -> list[tuple[str, str]]:
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("{") and '"sampled"' in stripped[:200000] and "\n{" not in stripped:
        data = json.loads(text)
        return list(zip(data["original"], data["sampled"], strict=False))
    pairs: list[tuple[str, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise SystemExit(f"{path}:{number}: not JSON ({err.msg})") from None
        if "original" not in row or not ("completions" in row or "completion" in row):
            raise SystemExit(f"{path}:{number}: needs 'original' and 'completions' (or 'completion')")
        for completion in row.get("completions", [row.get("completion")]):
            pairs.append((row["original"], completion))
    return pairs


def _chunks_by_original(pairs: list[tuple[str, str]], size: int) -> list[list[tuple[str, str]]]:
    """Consecutive pairs in chunks of about `size`, never splitting a run of pairs that share their original."""
    chunks: list[list[tuple[str, str]]] = []
    for pair in pairs:
        if chunks and (len(chunks[-1]) < size or chunks[-1][-1][0] == pair[0]):
            chunks[-1].append(pair)
        else:
            chunks.append([pair])
    return chunks


def _reward(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from crucible.clients.tables import format_table

    try:
        pairs = _pairs(args.data)[: args.limit]
    except OSError as err:
        print(f"crucible reward: cannot read --data {args.data}: {err.strerror or err}", file=sys.stderr)
        return 2
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        print(f"crucible reward: --data {args.data} is not pairs JSONL or detect-format JSON: {err}", file=sys.stderr)
        return 2
    if not pairs:
        print("crucible reward: no pairs in the data file", file=sys.stderr)
        return 1

    config = RewardConfig(detector_signal=args.signal)

    async def run() -> list[Any]:
        async with _mesh(args) as mesh:
            reward = CompositeReward(mesh, config)
            out: list[Any] = []
            with tqdm(total=len(pairs), desc="reward", unit="pair", file=sys.stderr) as bar:
                for chunk in _chunks_by_original(pairs, 16):  # a group's rewrites are normalised together
                    out.extend(await reward.score([o for o, _ in chunk], [c for _, c in chunk]))
                    bar.update(len(chunk))
            return out

    results = asyncio.run(run())
    if args.json:
        for (original, completion), r in zip(pairs, results, strict=True):
            row = {"original": original[:80], "completion": completion[:80], **r.__dict__}
            print(json.dumps(row | {"components": r.components(config)}))
        return 0
    rows = [
        (
            i,
            f"{r.total:+.3f}",
            *(f"{v:+.3f}" for v in r.components(config).values()),
            "-" if r.p_machine is None else f"{r.p_machine:.3f}",
            "-" if r.criterion is None else f"{r.criterion:+.2f}",
            "-" if r.perplexity is None else f"{r.perplexity:.1f}",
            f"{r.gate:.2f}",
            f"{r.copy:.2f}",
            ",".join(r.flags) or "-",
            completion[:40].replace("\n", " "),
        )
        for i, ((_, completion), r) in enumerate(zip(pairs, results, strict=True))
    ]
    header = ("#", "total", *COMPONENTS, "P(machine)", "criterion", "ppl", "gate", "copied", "flags", "completion")
    print(format_table(header, rows))
    print(
        "components are weighted contributions that add up to total: gate x (detector + fluency) + similarity - "
        "repetition - language - length - copy + penalty; detector is evasion within the rewrites of the same "
        "original (group-normalised), a detection withheld as too short pays a neutral 0.5, one with invisible "
        "characters 0"
    )
    mean = sum(r.total for r in results) / len(results)
    print(f"{len(results)} pairs, mean reward {mean:.3f}")
    return 0


def _attack_questions(args: argparse.Namespace) -> list[Any]:
    """The questions to attack: --builtin (the demo's set, filtered by --subjects) or the --data file or folder."""
    if args.builtin:
        if args.seca_subset:
            raise DataError("--seca-subset needs --data (an MMLU folder with seca_filtered_index.json)")
        from crucible.clients.builtin_questions import ATTACK_SAMPLES

        picked = [q for q in ATTACK_SAMPLES if not args.subjects or q.subject in args.subjects]
        if not picked:
            have = ", ".join(sorted({q.subject for q in ATTACK_SAMPLES}))
            raise DataError(f"no built-in question has subject(s) {args.subjects} (have: {have})")
        return picked
    return load_mmlu(args.data, args.subjects, seca_subset=args.seca_subset, limit_per_subject=args.limit_per_subject)


def _attack(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from crucible.clients.tables import format_table

    if not (math.isfinite(args.verify_content_threshold) and 0.0 <= args.verify_content_threshold <= 1.0):
        print(
            f"crucible attack: --verify-content-threshold must be within [0, 1], got {args.verify_content_threshold}",
            file=sys.stderr,
        )
        return 2
    try:
        questions = _attack_questions(args)
    except DataError as err:
        print(f"crucible attack: {err}", file=sys.stderr)
        return 2
    config = AttackConfig(
        iterations=args.iterations,
        equivalence_method=args.equivalence,
        equivalence_threshold=args.threshold,
        seed=args.seed,
        temperature=args.temperature,
        verify=args.verify,
        verify_content_threshold=args.verify_content_threshold,
        oversample=args.oversample,
    )
    trace = Trace(args.trace)
    already = len(trace.finished())

    async def run() -> list[Any]:
        async with _mesh(args) as mesh:
            attack = SecaAttack(mesh, config, trace)
            with tqdm(
                total=len(questions), initial=min(already, len(questions)), desc="attack", unit="q", file=sys.stderr
            ) as bar:

                def tick(outcome: Any) -> None:
                    bar.update(1)
                    bar.set_postfix_str(f"{outcome.qid}: {outcome.status}")

                return await attack.campaign(questions, parallel=args.parallel, progress=tick)

    outcomes = asyncio.run(run())
    summary = summarize(outcomes)
    if args.json:
        print(json.dumps({**summary, "trace": str(args.trace)}))
        return 0 if summary["errors"] == 0 else 1
    print(
        format_table(
            ("metric", "value"),
            [(k, "" if v is None else (f"{v:.3f}" if isinstance(v, float) else v)) for k, v in summary.items()],
        )
    )
    print(f"trace: {args.trace}")
    return 0 if summary["errors"] == 0 else 1

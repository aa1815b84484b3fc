"""Detector-evasion evaluation: paraphrase machine texts with one or more policies and score them over the mesh.

Reports, per policy and for the unparaphrased texts: AUROC (human vs machine) of the ensemble and of each member,
TPR at 1% FPR, similarity to the original, share of near-copies, perplexity. `python -m crucible.clients.evade_eval -h`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crucible.clients.detector import Detection
from crucible.clients.mesh import Mesh, MeshConfig
from crucible.clients.modelpaths import resolve_model_path
from crucible.clients.reward import clean_text, embedding_similarity
from crucible.clients.reward_text import copy_score

#: The prompt examples/grpo/train.py trains with; a policy is evaluated with the prompt it was trained on.
PROMPT_TEMPLATE = "Paraphrase the following text. Keep its meaning; answer with the rewrite only.\n\n{text}"
#: Bounds on inputs, checked before any model work.
MAX_TEXT_CHARS = 4000
MAX_TEXTS = 5000
MAX_FILE_BYTES = 512 * 1024 * 1024
#: Members whose raw score is lower for machine text (the others: higher = machine).
LOWER_IS_MACHINE = frozenset({"binoculars"})
#: Texts per Detect / Embed call, sent one call at a time: the detector refuses a call it cannot finish within the
#: deadline at its measured throughput (tens of tokens/s on a loaded CPU), so calls stay small and deadlines long.
CALL_CHUNK = 8
#: `--policy NAME=proposer`: the mesh's own paraphraser (Propose, mode paraphrase: its model, prompt and cleaning),
#: the rewrites a user of the mesh gets without training anything.
PROPOSER_POLICY = "proposer"


# ----------------------------------------------------------------------------------------------- metrics


def auroc(negatives: Sequence[float], positives: Sequence[float]) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney U / (n_pos * n_neg))."""
    if not negatives or not positives:
        raise ValueError("AUROC needs at least one negative and one positive")
    ranked = sorted([(s, 0) for s in negatives] + [(s, 1) for s in positives])
    rank_sum = 0.0
    i = 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j][0] == ranked[i][0]:
            j += 1
        mid = (i + 1 + j) / 2  # average 1-based rank of the tie block
        rank_sum += mid * sum(1 for k in range(i, j) if ranked[k][1] == 1)
        i = j
    n_pos, n_neg = len(positives), len(negatives)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def tpr_at_fpr(negatives: Sequence[float], positives: Sequence[float], fpr: float = 0.01) -> float:
    """Share of positives above the threshold that flags at most `fpr` of the negatives (strictly greater)."""
    if not negatives or not positives:
        raise ValueError("TPR needs at least one negative and one positive")
    if not 0 <= fpr < 1:
        raise ValueError("fpr must be in [0, 1)")
    ordered = sorted(negatives, reverse=True)
    threshold = ordered[min(len(ordered) - 1, math.floor(fpr * len(ordered)))]
    return sum(1 for p in positives if p > threshold) / len(positives)


def geometric_mean(values: Sequence[float]) -> float:
    """exp(mean(log v)) over the finite positive values (perplexities average in log space); nan when none."""
    logs = [math.log(v) for v in values if math.isfinite(v) and v > 0]
    return math.exp(sum(logs) / len(logs)) if logs else float("nan")


@dataclasses.dataclass(frozen=True)
class ConditionReport:
    """How detectable one set of machine texts is against the human texts, and how close it stays to the originals."""

    name: str
    auroc: float  # ensemble: P(machine) when every detection has one, else the ensemble criterion
    auroc_members: dict[str, float]
    tpr_at_1pct_fpr: float
    signal: str  # "probability" or "criterion"
    similarity: float  # mean (cos + 1) / 2 of proposer embeddings, the reward's similarity
    cosine: float  # mean cosine of the same embeddings
    near_copy_share: float  # share of rewrites with copy_score >= near_copy_threshold
    perplexity: float  # geometric mean of the detector's perplexity
    unreliable_share: float  # share of detections withheld (too few tokens, invisible characters)
    mean_words: float
    count: int
    #: "ensemble" and each member -> (human scores, machine scores), higher = machine: what the AUROCs were computed
    #: on, kept for the paired bootstrap of a change between conditions (auroc_change).
    scores: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = dataclasses.field(default_factory=dict)
    #: Each text's P(machine), None where the detector withheld it (human texts, machine texts): lets two conditions
    #: be compared by the ensemble on the texts both had judged (judged_change) when one of them withheld some.
    probabilities: tuple[tuple[float | None, ...], tuple[float | None, ...]] = ((), ())


@dataclasses.dataclass(frozen=True)
class AurocChange:
    """`base`'s AUROC minus `other`'s for one detector (a drop is positive), with a paired-bootstrap interval."""

    detector: str
    base: str
    other: str
    drop: float
    low: float
    high: float
    resamples: int
    #: Which texts it was computed on when not all of them (judged_change), e.g. "83 of 96 machine texts".
    texts: str = ""


def _paired_bootstrap(
    bh: Sequence[float],
    bm: Sequence[float],
    oh: Sequence[float],
    om: Sequence[float],
    resamples: int,
    seed: int,
) -> tuple[float, float]:
    """95 % interval of auroc(bh, bm) - auroc(oh, om), resampling human and machine indices, paired across both."""
    import random

    rng = random.Random(seed)
    drops = []
    for _ in range(resamples):
        h = [rng.randrange(len(bh)) for _ in bh]
        m = [rng.randrange(len(bm)) for _ in bm]
        drops.append(auroc([bh[i] for i in h], [bm[j] for j in m]) - auroc([oh[i] for i in h], [om[j] for j in m]))
    drops.sort()
    return drops[int(0.025 * (resamples - 1))], drops[int(0.975 * (resamples - 1))]


def auroc_change(
    base: ConditionReport, other: ConditionReport, detector: str = "ensemble", *, resamples: int = 2000, seed: int = 0
) -> AurocChange:
    """The drop of `detector`'s AUROC from `base` to `other` and its 95 % interval by a paired bootstrap: each
    resample draws human texts, and machine texts by index (the same original's rewrite under both conditions), with
    replacement, and scores both conditions on the same draw. Conditions must share the human texts (and, for the
    ensemble, its signal: P(machine) or the criterion)."""
    if detector not in base.scores or detector not in other.scores:
        raise ValueError(f"no {detector!r} scores in both conditions")
    (bh, bm), (oh, om) = base.scores[detector], other.scores[detector]
    mixed = detector == "ensemble" and base.signal != other.signal
    if len(bh) != len(oh) or len(bm) != len(om) or mixed:
        raise ValueError(f"{base.name} and {other.name} do not score the same texts with the same signal")
    low, high = _paired_bootstrap(bh, bm, oh, om, resamples, seed)
    return AurocChange(detector, base.name, other.name, auroc(bh, bm) - auroc(oh, om), low, high, resamples)


JUDGED = "ensemble, judged in both"


def judged_change(base: ConditionReport, other: ConditionReport, *, resamples: int = 2000, seed: int = 0) -> AurocChange | None:
    """The ensemble's P(machine) drop from `base` to `other` on the texts the detector judged under both (a
    withheld, too-short rewrite under either leaves its index out of both), with the paired-bootstrap interval;
    None when fewer than two texts of a class remain. For conditions whose ensemble signals differ."""
    (bh, bm), (oh, om) = base.probabilities, other.probabilities
    if len(bh) != len(oh) or len(bm) != len(om):
        raise ValueError(f"{base.name} and {other.name} do not score the same texts")
    hs = [i for i in range(len(bh)) if bh[i] is not None and oh[i] is not None]
    ms = [j for j in range(len(bm)) if bm[j] is not None and om[j] is not None]
    if len(hs) < 2 or len(ms) < 2:
        return None

    def pick(values: Sequence[float | None], idx: list[int]) -> list[float]:
        return [float(values[i] or 0.0) for i in idx]

    b_h, b_m, o_h, o_m = pick(bh, hs), pick(bm, ms), pick(oh, hs), pick(om, ms)
    low, high = _paired_bootstrap(b_h, b_m, o_h, o_m, resamples, seed)
    texts = f"{len(ms)} of {len(bm)} machine texts, {len(hs)} of {len(bh)} human texts"
    return AurocChange(JUDGED, base.name, other.name, auroc(b_h, b_m) - auroc(o_h, o_m), low, high, resamples, texts)


def ensemble_scores(human: Sequence[Detection], machine: Sequence[Detection]) -> tuple[list[float], list[float], str]:
    """Comparable ensemble scores (higher = machine): probabilities when all are present, else criteria."""
    both = [*human, *machine]
    if all(d.probability is not None for d in both):
        return [float(d.probability or 0.0) for d in human], [float(d.probability or 0.0) for d in machine], "probability"
    return [d.criterion for d in human], [d.criterion for d in machine], "criterion"


def member_scores(detections: Sequence[Detection], member: str) -> list[float]:
    """One member's raw scores oriented so that higher = machine."""
    sign = -1.0 if member in LOWER_IS_MACHINE else 1.0
    return [sign * d.members[member].raw_score for d in detections]


def condition_report(
    name: str,
    human: Sequence[Detection],
    machine: Sequence[Detection],
    originals: Sequence[str],
    texts: Sequence[str],
    cosines: Sequence[float],
    near_copy_threshold: float = 0.8,
) -> ConditionReport:
    """Metrics of one condition from its detections and embedding cosines (pure; the mesh calls happen before)."""
    if not (len(machine) == len(originals) == len(texts) == len(cosines)) or not machine:
        raise ValueError("need one detection, original, text and cosine per machine text")
    neg, pos, signal = ensemble_scores(human, machine)
    members = sorted(set.intersection(*(set(d.members) for d in [*human, *machine])))
    scores = {"ensemble": (tuple(neg), tuple(pos))}
    scores |= {m: (tuple(member_scores(human, m)), tuple(member_scores(machine, m))) for m in members}
    return ConditionReport(
        name=name,
        auroc=auroc(neg, pos),
        auroc_members={m: auroc(*scores[m]) for m in members},
        tpr_at_1pct_fpr=tpr_at_fpr(neg, pos, 0.01),
        signal=signal,
        similarity=sum((c + 1) / 2 for c in cosines) / len(cosines),
        cosine=sum(cosines) / len(cosines),
        near_copy_share=sum(1 for o, t in zip(originals, texts, strict=True) if copy_score(o, t) >= near_copy_threshold)
        / len(texts),
        perplexity=geometric_mean([d.perplexity for d in machine]),
        unreliable_share=sum(1 for d in machine if not d.reliable) / len(machine),
        mean_words=sum(len(t.split()) for t in texts) / len(texts),
        count=len(texts),
        scores=scores,
        probabilities=(tuple(d.probability for d in human), tuple(d.probability for d in machine)),
    )


# ----------------------------------------------------------------------------------------------- data


def leading_sentences(text: str, max_words: int) -> str:
    """Whole leading sentences of `text` up to `max_words` words (at least the first sentence)."""
    out: list[str] = []
    count = 0
    for sentence in re.split(r"(?<=[.!?])\s+", " ".join(text.split())):
        words = len(sentence.split())
        if out and count + words > max_words:
            break
        out.append(sentence)
        count += words
    return " ".join(out)


def _read(path: Path) -> str:
    if not path.is_file():
        raise SystemExit(f"{path}: no such file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise SystemExit(f"{path}: over {MAX_FILE_BYTES // 2**20} MiB")
    return path.read_text(encoding="utf-8")


def read_texts(path: Path) -> list[str]:
    """A .txt file (a text a line) or .jsonl ({"text": ...} or {"original": ...} a line)."""
    raw = _read(path)
    if path.suffix != ".jsonl":
        return [line for line in raw.splitlines() if line.strip()]
    texts = []
    for n, line in enumerate(raw.splitlines(), 1):
        if line.strip():
            row = json.loads(line)
            text = row.get("text", row.get("original")) if isinstance(row, dict) else None
            if not isinstance(text, str):
                raise SystemExit(f"{path}:{n}: needs a 'text' or 'original' string")
            texts.append(text)
    return texts


def read_detect_pairs(path: Path, half: str) -> tuple[list[str], list[str]]:
    """(human, machine) texts of a detect-format JSON ({"original": [...], "sampled": [...]}), optionally one half."""
    body = json.loads(_read(path))
    if not isinstance(body, dict) or not isinstance(body.get("original"), list) or not isinstance(body.get("sampled"), list):
        raise SystemExit(f"{path}: expected a JSON object with 'original' (human) and 'sampled' (machine) lists")
    human, machine = [str(t) for t in body["original"]], [str(t) for t in body["sampled"]]
    n = min(len(human), len(machine))
    lo, hi = {"all": (0, n), "first": (0, n // 2), "second": (n // 2, n)}[half]
    return human[lo:hi], machine[lo:hi]


def load_inputs(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """Human and machine texts, whitespace-normalised, cut to leading sentences, bounded."""
    human: list[str] = []
    machine: list[str] = []
    for item in args.data:
        h, m = read_detect_pairs(Path(item), args.half)
        human += h[: args.limit]
        machine += m[: args.limit]
    if args.human:
        human += read_texts(Path(args.human))[: args.limit]
    if args.machine:
        machine += read_texts(Path(args.machine))[: args.limit]
    human = [leading_sentences(t, args.max_words) for t in human if t.strip()]
    machine = [leading_sentences(t, args.max_words) for t in machine if t.strip()]
    if len(human) < 2 or len(machine) < 2:
        raise SystemExit("need at least 2 human and 2 machine texts (--data, or --human and --machine)")
    if len(human) + len(machine) > MAX_TEXTS:
        raise SystemExit(f"{len(human) + len(machine)} texts, at most {MAX_TEXTS}")
    if any(len(t) > MAX_TEXT_CHARS for t in [*human, *machine]):
        raise SystemExit(f"a text is over {MAX_TEXT_CHARS} characters after --max-words; lower --max-words")
    return human, machine


# ----------------------------------------------------------------------------------------------- policies


def load_policy(spec: str, base_model: str = "") -> tuple[Any, Any]:
    """(model, tokenizer) from a crucible model alias, a local HF folder, or a LoRA adapter folder (peft)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(spec)
    if (folder / "adapter_config.json").is_file():
        try:
            from peft import PeftModel
        except ImportError:
            raise SystemExit(f"{spec} is a LoRA adapter; loading it needs peft (pip install peft)") from None
        base = base_model or json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path", "")
        base_path = str(Path(base)) if Path(base).is_dir() else resolve_model_path(base or "smollm2-135m-instruct")
        adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32), str(folder))
        model: Any = adapted.merge_and_unload()
        tok_path = str(folder) if (folder / "tokenizer_config.json").is_file() else base_path
    else:
        path = str(folder) if folder.is_dir() else resolve_model_path(spec)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        tok_path = path
    tokenizer = AutoTokenizer.from_pretrained(tok_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model.eval(), tokenizer


def paraphrase(
    model: Any, tokenizer: Any, texts: Sequence[str], *, max_new_tokens: int, batch_size: int, temperature: float, seed: int
) -> list[str]:
    """One rewrite per text with the training prompt; greedy when temperature is 0."""
    import torch

    torch.manual_seed(seed)
    out: list[str] = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        prompts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": PROMPT_TEMPLATE.format(text=t)}], add_generation_prompt=True, tokenize=False
            )
            for t in chunk
        ]
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling)
        width = enc["input_ids"].shape[1]
        out += [clean_text(tokenizer.decode(row[width:], skip_special_tokens=True)).strip() for row in ids]
        print(f"  paraphrased {len(out)}/{len(texts)}", file=sys.stderr, flush=True)
    return out


def cached_rewrites(path: Path, machine: Sequence[str], make: Any, settings: dict[str, Any] | None = None) -> list[str]:
    """Rewrites from `path` when it holds one per machine text (same originals, in order) made with the same
    `settings` (policy, decoding, length); else made and saved. A file from other settings is never reused."""
    settings = dict(settings or {})
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if [r.get("original") for r in rows] == list(machine) and all(r.get("settings", {}) == settings for r in rows):
            return [str(r["rewrite"]) for r in rows]
    rewrites: list[str] = make()
    path.write_text(
        "".join(
            json.dumps({"original": o, "rewrite": r, "settings": settings}) + "\n" for o, r in zip(machine, rewrites, strict=True)
        )
    )
    return rewrites


async def propose_rewrites(
    mesh: Mesh, texts: Sequence[str], *, temperature: float, max_new_tokens: int, seed: int, timeout: float
) -> tuple[list[str], int]:
    """One rewrite per text from the mesh's proposer (Propose, paraphrase mode; greedy when temperature is 0), and
    how many came back with no candidate (the proposer dropped its only one: an empty rewrite here, withheld)."""
    out: list[str] = []
    for k, text in enumerate(texts):
        proposal = await mesh.proposer.propose(
            text, n=1, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed + k, timeout=timeout
        )
        out.append(proposal.candidates[0] if proposal.candidates else "")
        if (k + 1) % CALL_CHUNK == 0 or k + 1 == len(texts):
            print(f"  paraphrased {k + 1}/{len(texts)}", file=sys.stderr, flush=True)
    return out, sum(1 for r in out if not r)


# ----------------------------------------------------------------------------------------------- mesh


async def _detect(mesh: Mesh, texts: Sequence[str], timeout: float) -> list[Detection]:
    out: list[Detection] = []
    for i in range(0, len(texts), CALL_CHUNK):
        out += (await mesh.detector.detect(texts[i : i + CALL_CHUNK], timeout=timeout)).detections
    return out


async def _cosines(mesh: Mesh, originals: Sequence[str], texts: Sequence[str], timeout: float) -> list[float]:
    out: list[float] = []
    for i in range(0, len(texts), CALL_CHUNK):
        a, b = originals[i : i + CALL_CHUNK], texts[i : i + CALL_CHUNK]
        vectors = await mesh.proposer.embed([*a, *b], timeout=timeout)
        out += [2 * embedding_similarity(vectors[k], vectors[len(a) + k]) - 1 for k in range(len(a))]
    return out


async def evaluate(
    mesh: Mesh,
    human: Sequence[str],
    machine: Sequence[str],
    rewrites: dict[str, list[str]],
    near_copy_threshold: float = 0.8,
    timeout: float = 600.0,
) -> list[ConditionReport]:
    """The unparaphrased machine texts ("original") and each policy's rewrites, against the same human texts."""
    conditions = {"original": list(machine), **rewrites}
    human_det = await _detect(mesh, human, timeout)
    reports = []
    for name, texts in conditions.items():
        # An empty rewrite cannot be sent (the detector refuses empty texts); a placeholder stands in, withheld as too short.
        scored = [t if t.strip() else "(empty)" for t in texts]
        detections, cosines = await asyncio.gather(_detect(mesh, scored, timeout), _cosines(mesh, machine, scored, timeout))
        reports.append(condition_report(name, human_det, detections, machine, texts, cosines, near_copy_threshold))
    return reports


# ----------------------------------------------------------------------------------------------- output


def format_reports(reports: Sequence[ConditionReport]) -> str:
    from crucible.clients.tables import format_table

    members = sorted({m for r in reports for m in r.auroc_members})
    header = ("condition", "AUROC", *(f"AUROC {m}" for m in members), "TPR@1%FPR", "similarity", "cosine", "near-copy", "ppl")
    rows = [
        (
            r.name,
            f"{r.auroc:.3f}",
            *(f"{r.auroc_members[m]:.3f}" if m in r.auroc_members else "-" for m in members),
            f"{r.tpr_at_1pct_fpr:.3f}",
            f"{r.similarity:.3f}",
            f"{r.cosine:.3f}",
            f"{r.near_copy_share:.2f}",
            f"{r.perplexity:.1f}",
        )
        for r in reports
    ]
    return format_table(header, rows)


def changes(reports: Sequence[ConditionReport], resamples: int = 2000) -> list[AurocChange]:
    """AUROC drops from the first policy (the first condition after "original"; "original" itself when there is one
    policy) to every later condition, for the ensemble and each member, with their bootstrap intervals."""
    if len(reports) < 2:
        return []
    base = reports[1] if len(reports) > 2 else reports[0]
    out: list[AurocChange] = []
    for other in reports[reports.index(base) + 1 :]:
        # The ensemble's signal is P(machine) only when every detection has one: a condition with withheld (short)
        # rewrites falls back to the criterion, and a probability against a criterion is no change of one
        # detector. The members' raw scores are always comparable.
        # The members' raw scores are always comparable; the ensemble's P(machine) still is on the texts judged
        # under both conditions (judged_change).
        detectors = ["ensemble"] if other.signal == base.signal else []
        detectors += sorted(set(base.auroc_members) & set(other.auroc_members))
        if other.signal != base.signal:
            judged = judged_change(base, other, resamples=resamples)
            out.extend([judged] if judged is not None else [])
        out.extend(auroc_change(base, other, detector, resamples=resamples) for detector in detectors)
    return out


def format_changes(found: Sequence[AurocChange]) -> str:
    """One line per change: "<detector> <base> -> <other>: drop +0.025 (95 % interval -0.059 .. +0.110)"."""
    return "\n".join(
        f"{c.detector} {c.base} -> {c.other}: drop {c.drop:+.3f} (95 % interval {c.low:+.3f} .. {c.high:+.3f}, "
        f"paired bootstrap of {c.resamples})" + (f" on {c.texts}" if c.texts else "")
        for c in found
    )


def figure(reports: Sequence[ConditionReport]) -> Any:
    """The evaluation's figure: bars of AUROC (ensemble and members) and similarity per condition. Wider with more
    conditions, and their names slanted once there are more than three, so that the labels never overlap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    members = sorted({m for r in reports for m in r.auroc_members})
    series = ["ensemble", *members]
    fig, (a, b) = plt.subplots(1, 2, figsize=(max(11.0, 5.0 + 1.2 * len(reports)), 4.5))
    width = 0.8 / len(reports)
    for k, r in enumerate(reports):
        values = [r.auroc, *(r.auroc_members.get(m, float("nan")) for m in members)]
        a.bar([i + k * width for i in range(len(series))], values, width, label=r.name)
    a.set_xticks([i + width * (len(reports) - 1) / 2 for i in range(len(series))], series)
    a.axhline(0.5, color="grey", linestyle=":")
    a.set_ylim(0, 1.25)  # room above the bars for the legend
    a.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    a.set_ylabel("AUROC, human vs machine")
    a.legend(fontsize=8, loc="upper center", ncol=min(4, len(reports)))
    names = [r.name for r in reports]
    b.bar(range(len(reports)), [r.similarity for r in reports], label="similarity ((cos+1)/2)")
    b.plot(range(len(reports)), [r.near_copy_share for r in reports], "ko-", label="near-copy share")
    slanted = len(reports) > 3
    b.set_xticks(range(len(reports)), names, rotation=30 if slanted else 0, ha="right" if slanted else "center")
    b.set_ylim(0, 1.25)
    b.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    b.legend(fontsize=8, loc="upper center", ncol=2)
    fig.tight_layout()
    return fig


def plot(reports: Sequence[ConditionReport], path: Path) -> bool:
    """Write `figure(reports)` to `path` (PNG); False when matplotlib is missing."""
    try:
        fig = figure(reports)
    except ImportError:
        return False
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m crucible.clients.evade_eval", description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--data", action="append", default=[], help="detect-format JSON (original = human, sampled = machine)")
    p.add_argument("--half", choices=("all", "first", "second"), default="all", help="--data: which half, by pair index")
    p.add_argument("--human", default="", help="human texts: .txt (a text a line) or .jsonl ({'text': ...})")
    p.add_argument("--machine", default="", help="machine texts to paraphrase: .txt or .jsonl")
    p.add_argument("--limit", type=int, default=20, help="texts per file (each of human and machine)")
    p.add_argument("--max-words", type=int, default=50, help="keep the leading whole sentences up to this many words")
    p.add_argument(
        "--policy",
        action="append",
        default=[],
        metavar="NAME=MODEL",
        help="a paraphraser: crucible model alias, local HF folder or LoRA adapter folder, or 'proposer' (the "
        "mesh's Propose) (repeatable)",
    )
    p.add_argument("--base-model", default="", help="base model of LoRA adapters (default: the adapter's own record)")
    p.add_argument("--max-new-tokens", type=int, default=80)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="0: greedy; GRPO trains the policy's samples at 1 (train.py --temperature), so 1 measures what training changed",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--near-copy", type=float, default=0.8, help="word-trigram containment at which a rewrite is a near-copy")
    p.add_argument("--timeout", type=float, default=600.0, help="deadline of each Detect / Embed call, seconds")
    p.add_argument("--out", default="evade_eval", help="folder for report.json, rewrites_<policy>.jsonl and evade_eval.png")
    p.add_argument(
        "--mesh",
        action="append",
        default=[],
        metavar="SERVICE=HOST:PORT",
        help="detector / proposer address (repeatable); default: CRUCIBLE_<SERVICE>_ADDRESS, then the `crucible up` ports",
    )
    args = p.parse_args(argv)
    if args.limit < 1 or args.max_words < 5 or args.max_new_tokens < 1 or args.batch_size < 1:
        p.error("--limit, --max-new-tokens and --batch-size must be >= 1, --max-words >= 5")
    if args.max_new_tokens > 1024 or args.batch_size > 256 or args.temperature < 0 or not 0 < args.timeout <= 3600:
        p.error("--max-new-tokens at most 1024, --batch-size at most 256, --temperature >= 0, --timeout in (0, 3600]")
    for item in args.policy:
        name, _, model = item.partition("=")
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", name) or not model or name == "original":
            p.error(f"--policy {item!r}: expected NAME=MODEL, NAME of letters, digits, _ . - (not 'original')")
    return args


def mesh_config(items: Sequence[str], env: dict[str, str] | None = None) -> MeshConfig:
    env = dict(os.environ if env is None else env)
    for item in items:
        name, _, address = item.partition("=")
        if name not in ("detector", "proposer") or not address:
            raise SystemExit(f"--mesh {item!r}: expected detector|proposer=HOST:PORT")
        env[f"CRUCIBLE_{name.upper()}_ADDRESS"] = address
    return MeshConfig.from_env(env)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    human, machine = load_inputs(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rewrites: dict[str, list[str]] = {}
    decoding = {"temperature": args.temperature, "seed": args.seed, "max_new_tokens": args.max_new_tokens}
    for item in args.policy:
        name, _, spec = item.partition("=")

        def make(spec: str = spec) -> list[str]:
            if spec == PROPOSER_POLICY:

                async def ask() -> tuple[list[str], int]:
                    async with Mesh(mesh_config(args.mesh)) as mesh:
                        return await propose_rewrites(
                            mesh,
                            machine,
                            temperature=args.temperature,
                            max_new_tokens=args.max_new_tokens,
                            seed=args.seed,
                            timeout=args.timeout,
                        )

                texts, dropped = asyncio.run(ask())
                if dropped:
                    print(f"  the proposer returned no candidate for {dropped} texts (empty rewrites)", file=sys.stderr)
                return texts
            import torch

            if args.threads:
                torch.set_num_threads(args.threads)
            model, tokenizer = load_policy(spec, args.base_model)
            return paraphrase(
                model,
                tokenizer,
                machine,
                max_new_tokens=args.max_new_tokens,
                batch_size=args.batch_size,
                temperature=args.temperature,
                seed=args.seed,
            )

        print(f"{name}: paraphrasing {len(machine)} machine texts with {spec}", file=sys.stderr, flush=True)
        settings = {"policy": spec, **decoding, **({"base_model": args.base_model} if args.base_model else {})}
        rewrites[name] = cached_rewrites(out / f"rewrites_{name}.jsonl", machine, make, settings)

    async def run() -> list[ConditionReport]:
        async with Mesh(mesh_config(args.mesh)) as mesh:
            return await evaluate(mesh, human, machine, rewrites, args.near_copy, args.timeout)

    reports = asyncio.run(run())
    print(f"{len(human)} human texts, {len(machine)} machine texts (ensemble signal: {reports[0].signal})")
    print(format_reports(reports))
    found = changes(reports)
    if found:
        print("AUROC drop (a positive drop = harder to detect):")
        print(format_changes(found))
    summary = {
        "human": len(human),
        "machine": len(machine),
        "reports": [dataclasses.asdict(r) for r in reports],
        "changes": [dataclasses.asdict(c) for c in found],
    }
    (out / "report.json").write_text(json.dumps(summary, indent=1))
    if plot(reports, out / "evade_eval.png"):
        print(f"plot: {out / 'evade_eval.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

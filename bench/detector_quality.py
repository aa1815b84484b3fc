"""Detector quality study: per-token Fast-DetectGPT statistics of labelled texts, cached once, then analysed offline.

`score` runs one causal LM over every text once and keeps per-position statistics; `report` derives any truncation.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _quality_tables import MEMBER_ORIENTATION, markdown, plot_reliability

#: Files of the detect data format scored in this order (the smaller GPT-3.5/GPT-4 files first).
DEFAULT_FILES = (
    "xsum_gpt-3.5-turbo",
    "xsum_gpt-4",
    "writing_gpt-3.5-turbo",
    "writing_gpt-4",
    "xsum_gpt2-xl",
    "writing_gpt2-xl",
)


def spread_order(n: int) -> list[int]:
    """0..n-1 in an order whose every prefix is spread evenly over the range (bit-reversal-like)."""
    order: list[int] = []
    seen: set[int] = set()
    step = 1 << max(0, (n - 1).bit_length())
    while step >= 1:
        for i in range(0, n, step):
            if i not in seen:
                seen.add(i)
                order.append(i)
        step //= 2
    return order


def load_pairs(data_dir: Path, name: str) -> tuple[list[str], list[str]]:
    raw = json.loads((data_dir / f"{name}.json").read_text(encoding="utf-8"))
    return list(raw["original"]), list(raw["sampled"])


def score_command(args: argparse.Namespace) -> int:
    """Append one JSON line per text: file, pair index, label, token ids count and per-position statistics."""
    import torch

    from crucible.detector.criterion import CausalScorer, vocabulary_statistics
    from crucible.models import load_causal_lm

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = read_rows(out) if out.exists() else []
    done = {(row["file"], row["pair"], row["label"]) for row in previous}
    started = time.perf_counter()
    loaded = load_causal_lm(args.model, dtype=args.dtype, prepare=True)
    if previous and scoring_setting(previous) != {"dtype": loaded.identity.dtype, "max_tokens": args.max_tokens}:
        raise SystemExit(
            f"error: {out} was scored with {scoring_setting(previous)}, not dtype {loaded.identity.dtype} and "
            f"{args.max_tokens} tokens: pass the same --dtype/--max-tokens or another --out"
        )
    load_seconds = time.perf_counter() - started
    scorer = CausalScorer(loaded.model)
    tokenizer = loaded.tokenizer
    print(f"loaded {args.model} ({loaded.identity}) in {load_seconds:.1f} s; split head: {scorer.split}", file=sys.stderr)
    jobs: list[tuple[str, int, int, str]] = []
    files = args.files.split(",") if args.files else list(DEFAULT_FILES)
    per_file = {}
    for name in files:
        human, machine = load_pairs(Path(args.data), name)
        order = spread_order(len(human))[: args.pairs or None]
        per_file[name] = [(name, i, label, text) for i in order for label, text in ((0, human[i]), (1, machine[i]))]
    # Interleave the files so that a partial run covers every file evenly.
    queues = [per_file[name] for name in files]
    while any(queues):
        for q in queues:
            if q:
                jobs.extend(q[:2])
                del q[:2]
    jobs = [j for j in jobs if (j[0], j[1], j[2]) not in done]
    print(f"{len(jobs)} texts to score ({len(done)} cached in {out})", file=sys.stderr)
    tokens = 0
    t0 = time.perf_counter()
    with out.open("a", encoding="utf-8") as sink, torch.inference_mode():
        for k, (name, pair, label, text) in enumerate(jobs):
            ids = tokenizer(text, add_special_tokens=True)["input_ids"][: args.max_tokens]
            input_ids = torch.tensor([ids])
            mask = torch.ones_like(input_ids)
            if scorer.split:
                cols = torch.arange(len(ids))
                hidden = scorer.hidden(input_ids, mask, torch.zeros_like(cols), cols)
            else:
                logits_all = scorer.logits(input_ids, mask)[0]
            labels = torch.tensor([*ids[1:], ids[-1]])
            parts: list[list[torch.Tensor]] = [[] for _ in range(5)]
            for s in range(0, len(ids), args.chunk_rows):
                logits = scorer.head(hidden[s : s + args.chunk_rows]) if scorer.split else logits_all[s : s + args.chunk_rows]
                for bucket, value in zip(
                    parts, vocabulary_statistics(logits, None, labels[s : s + args.chunk_rows]), strict=True
                ):
                    bucket.append(value)
            ll, mu, var, lr, ent = (torch.cat(p).tolist() for p in parts)
            row = {
                "file": name,
                "pair": pair,
                "label": label,
                "dtype": loaded.identity.dtype,
                "max_tokens": args.max_tokens,
                "tokens": len(ids),
                "truncated": len(tokenizer(text, add_special_tokens=True)["input_ids"]) > args.max_tokens,
                "ll": [round(x, 5) for x in ll],
                "mu": [round(x, 5) for x in mu],
                "var": [round(x, 5) for x in var],
                "lr": [round(x, 4) for x in lr],
                "ent": [round(x, 5) for x in ent],
            }
            sink.write(json.dumps(row) + "\n")
            sink.flush()
            tokens += len(ids)
            if (k + 1) % 20 == 0:
                rate = (k + 1) / (time.perf_counter() - t0)
                print(
                    f"{k + 1}/{len(jobs)} texts, {rate:.2f} texts/s, {tokens / (time.perf_counter() - t0):.0f} tokens/s, "
                    f"load {os.getloadavg()[0]:.1f}",
                    file=sys.stderr,
                    flush=True,
                )
    elapsed = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "model": args.model,
                "identity": str(loaded.identity),
                "load_seconds": round(load_seconds, 2),
                "texts": len(jobs),
                "seconds": round(elapsed, 1),
                "texts_per_second": round(len(jobs) / elapsed, 3) if elapsed else None,
            }
        ),
        file=sys.stderr,
    )
    return 0


def truncated_scores(row: dict[str, Any], n_tokens: int | None) -> dict[str, float]:
    """The service's raw scores of a text truncated to its first `n_tokens` tokens (None: as scored)."""
    n = row["tokens"] if n_tokens is None else min(n_tokens, row["tokens"])
    k = n - 1  # scored positions
    ll = np.asarray(row["ll"][:k])
    mu = np.asarray(row["mu"][:n])
    var = np.asarray(row["var"][:k])
    lr = np.asarray(row["lr"][:k])
    ent = np.asarray(row["ent"][:k])
    crit = (ll.sum() - mu[:k].sum()) / math.sqrt(max(var.sum(), 1e-12))
    ppl = -ll.mean()
    x_ppl = -mu.mean()
    return {
        "fast_detectgpt": float(crit),
        "binoculars": float(ppl / x_ppl),
        "log_likelihood": float(ll.mean()),
        "log_rank": float(lr.mean()),
        "entropy": float(ent.mean()),
        "tokens": n,
    }


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# Scores files written before rows recorded their setting were all scored in float32 with 512 tokens.
LEGACY_SETTING = {"dtype": "float32", "max_tokens": 512}


def scoring_setting(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The dtype and token limit every row was scored with; a file mixing settings is refused (bf16 moves the scores,
    so a calibration fitted on a mix would match neither)."""
    settings = {(r.get("dtype", LEGACY_SETTING["dtype"]), r.get("max_tokens", LEGACY_SETTING["max_tokens"])) for r in rows}
    if len(settings) != 1:
        raise SystemExit(f"error: the scores mix settings {sorted(settings)}; score each (dtype, max tokens) into its own file")
    dtype, max_tokens = settings.pop()
    return {"dtype": dtype, "max_tokens": max_tokens}


def domain_of(name: str) -> str:
    return name.split("_", 1)[0]


def source_of(name: str) -> str:
    return name.split("_", 1)[1]


#: Candidate probabilities: name -> features of a logistic regression (all standardised).
#: In order of preference: the per-text normalised scores first (the criterion is standardised by the text's own
#: expected log-likelihood and variance, Binoculars is a ratio), which carry over to a new domain; then combinations
#: that contain the criterion; then the raw per-token means, whose level depends on how predictable a domain's
#: human prose is (encyclopedic text is), last.
CANDIDATES = {
    "criterion": ("fast_detectgpt",),
    "binoculars": ("binoculars",),
    "criterion+binoculars": ("fast_detectgpt", "binoculars"),
    "criterion+log_likelihood": ("fast_detectgpt", "log_likelihood"),
    "log_likelihood": ("log_likelihood",),
    "log_rank": ("log_rank",),
    "entropy": ("entropy",),
    "ensemble (5 features)": ("fast_detectgpt", "binoculars", "log_likelihood", "log_rank", "entropy"),
}
#: A combination of two features this correlated (|r| on the fit texts) is not a candidate: its fit can only use the
#: residual between near-duplicates, with large opposite-signed coefficients (the failure of the first ensemble).
MAX_CORRELATION = 0.95
#: Candidates that are one member calibrated alone (the fallback when no combination holds up).
SINGLE = ("criterion", "binoculars", "log_likelihood", "log_rank", "entropy")
#: With a second model's scores (`report --likelihood-scores`): its mean log-likelihood is the likelihood member
#: (crucible's `likelihood_model`), and these candidates join, after the per-text normalised single scores.
LIKELIHOOD_CANDIDATES = {
    "criterion+likelihood": ("fast_detectgpt", "likelihood"),
    "criterion+binoculars+likelihood": ("fast_detectgpt", "binoculars", "likelihood"),
    "likelihood": ("likelihood",),
}


def candidates(with_likelihood: bool) -> dict[str, tuple[str, ...]]:
    """The candidate probabilities in order of preference; the likelihood ones after criterion and binoculars."""
    if not with_likelihood:
        return dict(CANDIDATES)
    names = list(CANDIDATES)
    out = {n: CANDIDATES[n] for n in names[:2]}
    out.update({n: LIKELIHOOD_CANDIDATES[n] for n in ("criterion+likelihood", "criterion+binoculars+likelihood")})
    out.update({n: CANDIDATES[n] for n in names[2:]})
    out["likelihood"] = LIKELIHOOD_CANDIDATES["likelihood"]
    return out


def attach_likelihood(
    rows: list[dict[str, Any]], full: list[dict[str, float]], path: Path, first_tokens: int | None = None
) -> list[int]:
    """Add the second model's mean log-likelihood (`likelihood`, over its first `first_tokens` tokens when given) to
    each text's scores, matched by (file, pair, label); returns the indices of the texts both models scored (the
    report keeps only those)."""
    other = [r for r in read_rows(path) if r["tokens"] >= 2]
    scoring_setting(other)
    by_key = {(r["file"], r["pair"], r["label"]): truncated_scores(r, first_tokens)["log_likelihood"] for r in other}
    kept = []
    for i, r in enumerate(rows):
        value = by_key.get((r["file"], r["pair"], r["label"]))
        if value is not None:
            full[i]["likelihood"] = value
            kept.append(i)
    if not kept:
        raise SystemExit(f"error: {path} scored none of the texts of --scores")
    return kept


#: Members whose raw score (oriented: higher = machine) a combination must not fall below on a held-out group.
LENGTHS = (8, 16, 32, 64, 128, None)


def _auroc(labels: list[int], scores: list[float]) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores)) if len(set(labels)) == 2 else None


def report_command(args: argparse.Namespace) -> int:
    """Length study, leave-one-group-out selection of the combination and its C, and the held-out quality table."""
    from sklearn.linear_model import LogisticRegression

    from crucible.detector.calibration import choose_c_leaving_groups_out
    from crucible.detector.quality import expected_calibration_error, reliability_bins, roc_summary

    rows = read_rows(Path(args.scores))
    rows = [r for r in rows if r["tokens"] >= 2]
    scoring_setting(rows)  # refuse a file that mixes dtypes or token limits before any work
    if args.first_tokens < 0 or args.first_tokens == 1:
        raise SystemExit("error: --first-tokens must be 0 (whole texts) or at least 2")
    if args.first_tokens and args.write_calibration:
        raise SystemExit("error: --first-tokens studies shorter texts; fit a calibration on whole texts (drop it)")
    first = args.first_tokens or None  # every "whole text" figure below is of the first N tokens when given
    if args.likelihood_scores:
        if not args.likelihood_model:
            raise SystemExit("error: --likelihood-scores needs --likelihood-model (the model that scored them)")
        probe = [truncated_scores(r, None) for r in rows]
        rows = [rows[i] for i in attach_likelihood(rows, probe, Path(args.likelihood_scores), first)]
    cands = candidates(bool(args.likelihood_scores))
    orientation = dict(MEMBER_ORIENTATION, **({"likelihood": 1.0} if args.likelihood_scores else {}))
    files = sorted({r["file"] for r in rows})
    out: dict[str, Any] = {"scores_file": args.scores, "texts": len(rows), "first_tokens": first, "files": {}}
    for f in files:
        mine = [r for r in rows if r["file"] == f]
        out["files"][f] = {"human": sum(r["label"] == 0 for r in mine), "machine": sum(r["label"] == 1 for r in mine)}

    # 1. AUROC by length. A pair's two texts share a ~30-token human prefix, so the first N tokens of both are the same
    # text: the window is the first N scored tokens after the pair's common token prefix (their context is the
    # prefix, so this is an upper bound for a standalone N-token text). "all" is the whole text, as the service sees it.
    from transformers import AutoTokenizer

    from crucible.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(args.model).path, local_files_only=True)
    texts = {f: load_pairs(Path(args.data), f) for f in files}
    common: dict[tuple[str, int], int] = {}
    for r in rows:
        key = (r["file"], r["pair"])
        if key not in common:
            human, machine = (tokenizer(t[r["pair"]], add_special_tokens=True)["input_ids"] for t in texts[r["file"]])
            k = 0
            while k < min(len(human), len(machine)) and human[k] == machine[k]:
                k += 1
            common[key] = k

    def window(r: dict[str, Any], n: int) -> dict[str, float]:
        start = max(0, common[(r["file"], r["pair"])] - 1)  # position start predicts the first token that differs
        end = min(start + n, r["tokens"] - 1)
        if end <= start:
            return {"fast_detectgpt": 0.0, "log_likelihood": 0.0}
        ll, mu, var = (np.asarray(r[k][start:end]) for k in ("ll", "mu", "var"))
        return {
            "fast_detectgpt": float((ll.sum() - mu.sum()) / math.sqrt(max(var.sum(), 1e-12))),
            "log_likelihood": float(ll.mean()),
        }

    out["common_prefix_tokens_median"] = float(np.median(list(common.values())))
    lengths: dict[str, Any] = {}
    labels = [r["label"] for r in rows]
    for n in LENGTHS:
        key = "all" if n is None else str(n)
        feats = [truncated_scores(r, first) if n is None else window(r, n) for r in rows]
        entry = {
            "criterion": _auroc(labels, [x["fast_detectgpt"] for x in feats]),
            "log_likelihood": _auroc(labels, [x["log_likelihood"] for x in feats]),
            "per_file_criterion": {},
        }
        for f in files:
            idx = [i for i, r in enumerate(rows) if r["file"] == f]
            entry["per_file_criterion"][f] = _auroc([labels[i] for i in idx], [feats[i]["fast_detectgpt"] for i in idx])
        lengths[key] = entry
    out["auroc_by_length"] = lengths

    # 2. Raw AUROC of every member (oriented: higher = machine) on every scored text of each file: no fitting at all.
    full = [truncated_scores(r, first) for r in rows]
    if args.likelihood_scores:
        attach_likelihood(rows, full, Path(args.likelihood_scores), first)
    raw_auroc: dict[str, Any] = {}
    for group in ["all", *files]:
        idx = [i for i, r in enumerate(rows) if group == "all" or r["file"] == group]
        y = [rows[i]["label"] for i in idx]
        raw_auroc[group] = {"n": len(idx), **{m: _auroc(y, [o * full[i][m] for i in idx]) for m, o in orientation.items()}}
    out["raw_auroc"] = raw_auroc

    # Fit half (first half of each file's pairs by index) and held-out half.
    size = {f: len(load_pairs(Path(args.data), f)[0]) for f in files}
    fit = [i for i, r in enumerate(rows) if r["pair"] < size[r["file"]] // 2]
    held = [i for i, r in enumerate(rows) if r["pair"] >= size[r["file"]] // 2]
    labels_all = np.array([r["label"] for r in rows])

    def matrix(names: tuple[str, ...], idx: list[int]) -> np.ndarray:
        return np.array([[full[i][n] for n in names] for i in idx], dtype=np.float64)

    def fit_predict(names: tuple[str, ...], train: list[int], test: list[int], c: float) -> np.ndarray:
        x = matrix(names, train)
        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale[scale == 0] = 1.0
        model = LogisticRegression(C=c, max_iter=2000).fit((x - mean) / scale, labels_all[train])
        return model.predict_proba((matrix(names, test) - mean) / scale)[:, 1]

    groupings = {
        "domain": [domain_of(rows[i]["file"]) for i in fit],
        "source": [source_of(rows[i]["file"]) for i in fit],
    }
    chosen_c: dict[str, Any] = {}
    for name, feats_names in cands.items():
        c, losses = choose_c_leaving_groups_out(matrix(feats_names, fit), labels_all[fit], list(groupings.values()))
        chosen_c[name] = {"c": c, "held_out_log_loss": {f"{k:g}": round(v, 4) for k, v in losses.items()}}
    out["regularisation"] = chosen_c

    # 3. Does a combination hold up on groups it was not fitted on? Leave each domain and each source out in turn
    # (fit on every text of the other groups, fit and held-out halves alike), AUROC on the left-out group.
    checks: dict[str, Any] = {}
    for kind, of in (("domain", domain_of), ("source", source_of)):
        for g in sorted({of(f) for f in files}):
            test = [i for i, r in enumerate(rows) if of(r["file"]) == g]
            train = [i for i, r in enumerate(rows) if of(r["file"]) != g]
            if len(set(labels_all[train].tolist())) < 2 or len(set(labels_all[test].tolist())) < 2:
                continue
            y = labels_all[test].tolist()
            members = {m: _auroc(y, [o * full[i][m] for i in test]) for m, o in orientation.items()}
            combos = {n: _auroc(y, fit_predict(fs, train, test, chosen_c[n]["c"]).tolist()) for n, fs in cands.items()}
            checks[f"{kind}={g}"] = {"n": len(test), "members": members, "combinations": combos}
    out["leave_one_group_out"] = checks
    holds: dict[str, bool] = {}
    for n in cands:
        holds[n] = all(
            (v["combinations"][n] or 0) >= max(x for x in v["members"].values() if x is not None) - args.tolerance
            for v in checks.values()
        )
    out["holds_up"] = holds
    worst = {n: min((v["combinations"][n] or 0.0) for v in checks.values()) for n in cands}
    out["worst_left_out_auroc"] = {n: round(v, 4) for n, v in worst.items()}
    # Near-duplicate features make a combination ineligible (see MAX_CORRELATION); it is still reported.
    collinear: dict[str, float] = {}
    for n, fs in cands.items():
        if len(fs) > 1:
            r = np.corrcoef(matrix(fs, fit).T)
            top = float(np.max(np.abs(r[np.triu_indices(len(fs), 1)])))
            if top > MAX_CORRELATION:
                collinear[n] = round(top, 4)
    out["collinear"] = collinear
    # The first candidate in order of preference that holds up and whose worst case is within the tolerance of the
    # best worst case of those that hold up; if none holds up, the single member with the best worst case.
    holding = [n for n in cands if holds[n] and n not in collinear]
    if holding:
        best = max(worst[n] for n in holding)
        out["chosen"] = next(n for n in holding if worst[n] >= best - args.tolerance)
    else:
        out["chosen"] = max((n for n in cands if n in SINGLE or n == "likelihood"), key=lambda n: worst[n])
    if args.combination == "auto":
        args.combination = out["chosen"]
    out["shipped"] = args.combination
    if args.combination not in cands:
        raise SystemExit(f"error: --combination {args.combination} needs --likelihood-scores")

    # 4. Held-out half: AUROC, TPR at 1% / 5% FPR and ECE of each candidate fitted on the fit half.
    table: dict[str, Any] = {}
    for n, fs in cands.items():
        probs = fit_predict(fs, fit, held, chosen_c[n]["c"])
        per: dict[str, Any] = {}
        for group in ["all", *files]:
            sel = [k for k, i in enumerate(held) if group == "all" or rows[i]["file"] == group]
            y = [int(labels_all[held[k]]) for k in sel]
            pr = [float(probs[k]) for k in sel]
            if len(set(y)) < 2:
                continue
            roc = roc_summary(y, pr)
            per[group] = {
                "n": len(y),
                "auroc": roc["auroc"],
                "tpr_at_1pct_fpr": roc["tpr_at_fpr"].get("0.01"),
                "tpr_at_5pct_fpr": roc["tpr_at_fpr"].get("0.05"),
                "ece": expected_calibration_error(y, pr),
                "bins": reliability_bins(y, pr),
            }
        table[n] = per
    out["held_out"] = table

    # 5. Across domains: each domain's texts scored by a candidate fitted on the other domain(s) only (every text of
    # them, fit and held-out halves alike): the figure closest to a new domain, per file, with its ECE.
    cross: dict[str, Any] = {}
    domains = sorted({domain_of(f) for f in files})
    if len(domains) >= 2:
        for n, fs in cands.items():
            probs_of: dict[int, float] = {}
            for g in domains:
                test = [i for i, r in enumerate(rows) if domain_of(r["file"]) == g]
                train = [i for i, r in enumerate(rows) if domain_of(r["file"]) != g]
                for i, pr in zip(test, fit_predict(fs, train, test, chosen_c[n]["c"]).tolist(), strict=True):
                    probs_of[i] = pr
            per = {}
            for group in ["all", *files]:
                idx = [i for i in sorted(probs_of) if group == "all" or rows[i]["file"] == group]
                y = [int(labels_all[i]) for i in idx]
                pr = [probs_of[i] for i in idx]
                if len(set(y)) < 2:
                    continue
                roc = roc_summary(y, pr)
                per[group] = {
                    "n": len(y),
                    "auroc": roc["auroc"],
                    "tpr_at_1pct_fpr": roc["tpr_at_fpr"].get("0.01"),
                    "tpr_at_5pct_fpr": roc["tpr_at_fpr"].get("0.05"),
                    "ece": expected_calibration_error(y, pr),
                    "bins": reliability_bins(y, pr),
                }
            cross[n] = per
    out["cross_domain"] = cross
    if args.write_calibration:
        out["calibration"] = write_calibration(args, rows, full, fit, chosen_c, out)
    if args.plot:
        where = "each domain fitted on the other" if out.get("cross_domain") else "held-out half"
        plot_reliability(out, Path(args.plot), title=f"{args.model}: reliability, {where}")
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(markdown(out))
    return 0


def write_calibration(
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    full: list[dict[str, float]],
    fit: list[int],
    chosen_c: dict[str, Any],
    out: dict[str, Any],
) -> dict[str, Any]:
    """Fit the chosen combination on the fit half with its leave-one-group-out C and write a calibration file."""
    import datetime as dt
    import hashlib

    from crucible.detector.calibration import CalibrationFile, fit_calibration
    from crucible.models import resolve_model

    setting = scoring_setting(rows)

    resolved = resolve_model(args.model)
    names = candidates(bool(args.likelihood_scores))[args.combination]
    human = [full[i] for i in fit if rows[i]["label"] == 0]
    machine = [full[i] for i in fit if rows[i]["label"] == 1]
    groups = [f"{rows[i]['file']}#{rows[i]['pair']}" for i in fit if rows[i]["label"] == 0]
    groups += [f"{rows[i]['file']}#{rows[i]['pair']}" for i in fit if rows[i]["label"] == 1]
    files = sorted({r["file"] for r in rows})
    fitted_on = {
        "files": [
            {
                "file": f"{f}.json",
                "sha256": hashlib.sha256((Path(args.data) / f"{f}.json").read_bytes()).hexdigest(),
                "fit_pairs": sorted({rows[i]["pair"] for i in fit if rows[i]["file"] == f}),
            }
            for f in files
        ],
        "texts": len(fit),
        "date": dt.date.today().isoformat(),
        "dtype": setting["dtype"],
        "max_tokens": setting["max_tokens"],
        "combination": args.combination,
        "regularisation": "C chosen by held-out log-loss leaving one domain out and one source model out in turn",
        "held_out": {
            g: {k: v[k] for k in ("n", "auroc", "tpr_at_1pct_fpr", "tpr_at_5pct_fpr", "ece")}
            for g, v in out["held_out"][args.combination].items()
        },
        "tool": "bench/detector_quality.py",
        "code": {"git_commit": _git_commit()},
    }
    likelihood = None
    if args.likelihood_scores:
        fitted_on["likelihood_scores"] = {
            "model": args.likelihood_model,
            "dtype": scoring_setting(read_rows(Path(args.likelihood_scores)))["dtype"],
        }
        likelihood = (args.likelihood_model, resolve_model(args.likelihood_model).revision)
    entry = fit_calibration(
        human,
        machine,
        members=["fast_detectgpt", "binoculars", *(["likelihood"] if likelihood else [])],
        likelihood=likelihood,
        features=list(names),
        groups=groups,
        sampling=(args.model, resolved.revision),
        scoring=(args.model, resolved.revision),
        version=args.version,
        fitted_on=fitted_on,
        c=chosen_c[args.combination]["c"],
    )
    description = (
        f"{args.model} (one model: sampling = scoring), {setting['dtype']}, {setting['max_tokens']} tokens"
        + (f", with {args.likelihood_model} as the likelihood member (likelihood_model). " if likelihood else ". ")
        + "Detection.probability is a logistic "
        f"regression over {', '.join(names)} (standardised), its C chosen by held-out log-loss leaving one domain "
        "(XSum, Writing) and one source model (GPT-3.5-turbo, GPT-4, GPT-2-XL) out in turn; "
        + (
            "it never fell more than the tolerance below its best member on a left-out domain or source, and it is "
            "the first such candidate in order of preference (per-text normalised scores first) whose worst left-out "
            "AUROC is within the tolerance of the best."
            if out["holds_up"].get(args.combination)
            else "no combination held up against its best member on every left-out domain and source, so this is the "
            "member with the best worst case, calibrated alone."
            if args.combination == out["chosen"]
            else f"chosen with --combination over the report's rule ({out['chosen']}): its worst left-out AUROC is "
            f"{out['worst_left_out_auroc'][args.combination]:.3f} against {out['worst_left_out_auroc'][out['chosen']]:.3f}, "
            "although it fell more than the tolerance below the best member on a left-out group (see the detector "
            "README)."
        )
        + " Two Gaussians per member as before. Fitted on the scored texts of the first half (by pair index) of "
        "each detect file; see fitted_on and the detector README. Refit on your own domain with crucible detector calibrate."
    )
    CalibrationFile(args.version, "builtin", (entry,), description).write(Path(args.write_calibration))
    return {"path": args.write_calibration, "version": args.version, "combination": args.combination}


def _git_commit() -> str:
    import subprocess

    done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    return done.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    score = sub.add_parser("score", help="per-token statistics of every text, appended to --out (resumable)")
    score.add_argument("--model", default="smollm2-135m-instruct")
    score.add_argument("--dtype", default="auto")
    score.add_argument("--data", default="../shared/data/detect")
    score.add_argument("--files", default="", help="comma-separated file stems (default: the six detect files)")
    score.add_argument("--pairs", type=int, default=0, help="pairs per file, evenly spread (0 = all)")
    score.add_argument("--max-tokens", type=int, default=512)
    score.add_argument("--chunk-rows", type=int, default=64)
    score.add_argument("--threads", type=int, default=2)
    score.add_argument("--out", required=True)
    report = sub.add_parser("report", help="length study, combination choice and held-out quality from a scores file")
    report.add_argument("--scores", required=True, help="a file written by `score`")
    report.add_argument("--data", default="../shared/data/detect")
    report.add_argument("--model", default="smollm2-135m-instruct", help="the model that scored (its tokenizer)")
    report.add_argument(
        "--tolerance",
        type=float,
        default=0.05,
        help="AUROC a combination may lose to its best member on a left-out group (0.05: about one standard error "
        "of an AUROC with 25 texts a class)",
    )
    report.add_argument("--out", required=True, help="JSON report")
    report.add_argument("--write-calibration", default="", help="also write a calibration file for --combination")
    report.add_argument("--combination", default="auto", choices=["auto", *candidates(True)], help="auto: the report's choice")
    report.add_argument(
        "--likelihood-scores",
        default="",
        help="a `score` file of a second model on the same texts: its mean log-likelihood is the likelihood member",
    )
    report.add_argument("--likelihood-model", default="", help="the model that wrote --likelihood-scores")
    report.add_argument("--version", default="", help="version of the calibration file written")
    report.add_argument(
        "--first-tokens",
        type=int,
        default=0,
        help="score every text as if it stopped after its first N tokens (each model's own tokens; the DetectGPT "
        "pairs share a ~30-token human prefix, which counts): how the figures hold up on shorter texts. 0 = whole",
    )
    report.add_argument("--plot", default="", help="also write a reliability diagram (PNG) of the held-out texts")
    args = parser.parse_args(argv)
    return int(score_command(args) if args.command == "score" else report_command(args))


if __name__ == "__main__":
    raise SystemExit(main())

"""`crucible detector calibrate`: score labelled texts in-process, fit the calibration (its regularisation chosen by
leaving groups of texts out), write the calibration file and its held-out quality report.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crucible.detector.cli_inputs import InputError, load_detector, model_args, progress, read_inputs

_BY_PRODUCTS = ("log_likelihood", "log_rank", "entropy")
#: --leave-out choices: how texts are grouped when the regularisation C is chosen by leaving one group out at a time.
LEAVE_OUT = ("auto", "domain,source", "domain", "source", "file", "pair")


def file_groups(names: Sequence[str]) -> dict[str, list[str]]:
    """Domain and source model of each file from its name DOMAIN_SOURCE (the detect data files: xsum_gpt-4.json is
    domain xsum, source gpt-4); a name without '_' is its own domain and source. Also 'file': the name itself."""
    stems = [Path(n).stem for n in names]
    return {
        "domain": [s.split("_", 1)[0] for s in stems],
        "source": [s.split("_", 1)[1] if "_" in s else s for s in stems],
        "file": stems,
    }


def leave_out_groupings(choice: str, names: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """The groupings (kind names, and per file one group per grouping) to leave out, for --leave-out `choice`.

    'auto': domain and source when either has two or more values, else each file when there are two or more files,
    else none (pairs: C chosen by cross-validation folds of whole pairs, as before). A grouping with a single value
    cannot be left out, so it is dropped; an explicit choice that leaves nothing raises ValueError.
    """
    per_file = file_groups(names)
    if choice == "pair":
        return [], []
    wanted = ["domain", "source"] if choice == "auto" else choice.split(",")
    kinds = [k for k in wanted if len(set(per_file[k])) >= 2]
    if choice == "auto" and not kinds and len(set(per_file["file"])) >= 2:
        kinds = ["file"]
    if not kinds and choice != "auto":
        raise ValueError(
            f"--leave-out {choice}: needs at least two files of different {' or '.join(wanted)} "
            "(files named DOMAIN_SOURCE.json, e.g. xsum_gpt-4.json)"
        )
    return kinds, [per_file[k] for k in kinds]


# Scores of the quality report: name -> (how to read it from RawScores.features(), orientation: higher = machine).
_REPORT_SCORES = (
    ("criterion", "fast_detectgpt", 1.0),
    ("-binoculars", "binoculars", -1.0),
    ("classifier", "classifier", 1.0),
    ("likelihood", "likelihood", 1.0),
    ("log_likelihood", "log_likelihood", 1.0),
    ("-log_rank", "log_rank", -1.0),
    ("-entropy", "entropy", -1.0),
)


def _code_version() -> dict[str, str]:
    """The crucible version and, when running from a git checkout, its commit (with '-dirty' for local changes)."""
    import subprocess
    from importlib import metadata

    out = {}
    try:
        out["crucible"] = metadata.version("crucible")
    except metadata.PackageNotFoundError:
        out["crucible"] = "unknown"
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--", "."], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        out["git_commit"] = commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def _sidecar(out: Path, given: str, suffix: str) -> Path:
    return Path(given) if given else out.with_name(out.name.removesuffix(".json") + suffix)


def calibrate(args: argparse.Namespace) -> int:
    import datetime
    import hashlib

    import numpy as np

    from crucible.clients.tables import format_table
    from crucible.detector.calibration import (
        Calibration,
        CalibrationError,
        CalibrationFile,
        choose_c_leaving_groups_out,
        fit_calibration,
    )
    from crucible.detector.core import score_many
    from crucible.detector.quality import plot_roc, quality_report
    from crucible.runtime.errors import CrucibleError

    try:
        texts, labels, pairs = read_inputs(args.data)
    except (OSError, InputError) as err:
        print(f"crucible detector calibrate: {err}", file=sys.stderr)
        return 2
    if labels is None:
        print(
            "crucible detector calibrate: every text needs a label (use the detect data format or 'label' fields)",
            file=sys.stderr,
        )
        return 2
    try:
        kinds, per_file = leave_out_groupings(args.leave_out, [p if p != "-" else "stdin" for p in args.data])
    except ValueError as err:
        print(f"crucible detector calibrate: {err}", file=sys.stderr)
        return 2
    if not 0.0 <= args.holdout_fraction < 1.0:
        print("crucible detector calibrate: --holdout-fraction must be in [0, 1)", file=sys.stderr)
        return 2
    # Split each file by pair id: the first pairs fit, the last --holdout-fraction evaluate. A human text and its
    # machine continuation (same prefix) land on the same side, and files sharing human texts by pair index (the
    # GPT-3.5 and GPT-4 files of one domain) split them alike.
    sizes: dict[int, int] = {}
    for f, p in pairs:
        sizes[f] = max(sizes.get(f, 0), p + 1)
    cut = {f: round(n * (1.0 - args.holdout_fraction)) for f, n in sizes.items()}
    if args.pairs_per_file:  # evenly spaced pairs of each side, so a quick fit still spans each whole file
        keep: dict[int, set[int]] = {}
        for f, n in sizes.items():
            fit_n = max(1, round(args.pairs_per_file * (1.0 - args.holdout_fraction)))
            sides = [(0, cut[f], fit_n), (cut[f], n, args.pairs_per_file - fit_n)]
            keep[f] = {
                int(v) for lo, hi, k in sides if hi > lo and k > 0 for v in np.linspace(lo, hi - 1, min(k, hi - lo)).round()
            }
        chosen = [i for i, (f, p) in enumerate(pairs) if p in keep[f]]
        texts, pairs = [texts[i] for i in chosen], [pairs[i] for i in chosen]
        labels = [labels[i] for i in chosen]
    fit_idx = [i for i, (f, p) in enumerate(pairs) if p < cut[f]]
    eval_idx = [i for i, (f, p) in enumerate(pairs) if p >= cut[f]]
    seen = {texts[i] for i in fit_idx}
    leaked = sum(1 for i in eval_idx if texts[i] in seen)
    eval_idx = [i for i in eval_idx if texts[i] not in seen]  # a text used for fitting is never evaluated
    # Cross-validation folds group every text of a pair, and pairs whose human text is the same (across files).
    human_of = {pairs[i]: texts[i] for i in range(len(texts)) if labels[i] == 0}
    group = [hashlib.sha256(human_of.get(pairs[i], f"{pairs[i]}").encode()).hexdigest() for i in range(len(texts))]
    try:
        detector = load_detector(args)
        raw = score_many(detector, texts, batch_size=args.batch_size, progress=progress)
        members = list(detector.enabled_members)
        features: list[str] = []
        for name in (x.strip() for x in args.features.split(",") if x.strip()):
            features += members if name == "members" else [name]
        rows = {i: raw[i].features() for i in range(len(texts))}
        human = [i for i in fit_idx if labels[i] == 0]
        machine = [i for i in fit_idx if labels[i] == 1]
        ids = detector.identities
        classifier = (ids["classifier"].name, ids["classifier"].revision) if "classifier" in ids else None
        likelihood = (ids["likelihood"].name, ids["likelihood"].revision) if "likelihood" in ids else None
        now = datetime.datetime.now(datetime.UTC)
        version = args.version or "fit-" + now.strftime("%Y%m%dT%H%M%SZ")
        files = []
        for f, path in enumerate(args.data):
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest() if path != "-" else ""
            used = sorted({p for g, p in pairs if g == f})
            files.append(
                {
                    "file": Path(path).name if path != "-" else "stdin",
                    "sha256": digest,
                    "pairs": sizes.get(f, 0),
                    "fit_pairs": f"0..{cut.get(f, 0) - 1}",
                    "pairs_used": "all" if not args.pairs_per_file else ",".join(map(str, used)),
                }
            )
        # Regularisation: the C that predicts best on groups of texts (domains, source models) it was not fitted
        # on, so the probability does not learn what tells the fitted domains apart; pairs only as a fallback.
        c = None
        losses: dict[float, float] = {}
        regularisation = "C chosen by 5-fold cross-validated log-loss, folds of whole pairs"
        if kinds:
            fit_rows = [*human, *machine]
            matrix = np.array([[rows[i][n] for n in features] for i in fit_rows], dtype=np.float64)
            y = np.array([labels[i] for i in fit_rows])
            groupings = [[grouping[pairs[i][0]] for i in fit_rows] for grouping in per_file]
            c, losses = choose_c_leaving_groups_out(matrix, y, groupings)
            regularisation = (
                f"C chosen by held-out log-loss leaving one {' and then one '.join(kinds)} out in turn "
                f"({'; '.join(f'{k}: ' + ', '.join(sorted(set(g))) for k, g in zip(kinds, per_file, strict=True))})"
            )
            print(f"regularisation: C = {c:g} ({regularisation})", file=sys.stderr)
        entry = fit_calibration(
            [rows[i] for i in human],
            [rows[i] for i in machine],
            members=members,
            features=features,
            groups=[group[i] for i in (*human, *machine)],
            c=c,
            sampling=(ids["sampling"].name, ids["sampling"].revision),
            scoring=(ids["scoring"].name, ids["scoring"].revision),
            classifier=classifier,
            likelihood=likelihood,
            version=version,
            fitted_on={
                "files": files,
                "human": len(human),
                "machine": len(machine),
                "split": f"first {1 - args.holdout_fraction:g} of each file's pairs fit, the rest held out"
                + (f" ({leaked} held-out texts also in the fit half left out)" if leaked else ""),
                "date": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "code": _code_version(),
                "dtype": ids["scoring"].dtype,
                "device": ids["scoring"].device,
                "max_tokens": args.max_tokens,
                "regularisation": regularisation,
                **({"held_out_log_loss_by_c": {f"{k:g}": round(v, 4) for k, v in losses.items()}} if kinds else {}),
            },
        )
    except (CalibrationError, CrucibleError, ValueError) as err:
        print(f"crucible detector calibrate: {getattr(err, 'message', err)}", file=sys.stderr)
        return 2
    cal = Calibration("logistic_ensemble", version, args.out, entry.members, entry.ensemble)
    split = eval_idx if eval_idx else fit_idx
    where = "held-out" if eval_idx else "in-sample (no hold-out)"

    def scores_of(indices: list[int]) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for name, key, sign in _REPORT_SCORES:
            if all(key in rows[i] for i in indices):
                out[name] = [sign * rows[i][key] for i in indices]
        out["two-gaussian P(criterion)"] = [cal.member_probability("fast_detectgpt", rows[i]["fast_detectgpt"]) for i in indices]  # type: ignore[misc]
        out["ensemble P(machine)"] = [cal.probability(rows[i]) for i in indices]  # type: ignore[misc]
        return out

    groups = {f"{where}, all files": ([labels[i] for i in split], scores_of(split))}
    for f, path in enumerate(args.data):
        chosen = [i for i in split if pairs[i][0] == f]
        if chosen:
            groups[Path(path).stem if path != "-" else "stdin"] = ([labels[i] for i in chosen], scores_of(chosen))
    report = quality_report(groups)
    entry = dataclasses.replace(
        entry,
        fitted_on={
            **entry.fitted_on,
            "held_out_auroc": {
                name: report[next(iter(report))][name]["auroc"]
                for name in ("criterion", "-binoculars", "ensemble P(machine)")
                if name in report[next(iter(report))]
            },
        },
    )
    out = Path(args.out)
    CalibrationFile(version, str(out), (entry,), args.description).write(out)
    print(
        f"wrote {out} (version {version}; fitted on {len(human)} human + {len(machine)} machine texts, "
        f"features {', '.join(features)})"
    )
    report_path = _sidecar(out, args.report, ".roc.json")
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(
        json.dumps(
            {
                "version": version,
                "split": where,
                "fpr_points": [0.01, 0.05],
                "orientation": "every score is oriented so that higher = machine",
                "groups": report,
            },
            indent=1,
        )
        + "\n",
        encoding="utf-8",
    )
    print(f"wrote {report_path}")
    if not args.no_plot:
        plot_path = _sidecar(out, args.plot, ".roc.png")
        try:
            plot_roc(
                report,
                plot_path,
                title=f"{ids['scoring'].name}: ROC on {where} texts ({version})",
                scores=(
                    "criterion",
                    "-binoculars",
                    "log_likelihood",
                    "-log_rank",
                    "-entropy",
                    "ensemble P(machine)",
                    "classifier",
                ),
            )
            print(f"wrote {plot_path}")
        except RuntimeError as err:
            print(f"crucible detector calibrate: no plot: {err}", file=sys.stderr)
    print(
        format_table(
            ("member", "mu0", "sigma0", "mu1", "sigma1"),
            [(m, *(f"{v:.4f}" for v in (g.mu0, g.sigma0, g.mu1, g.sigma1))) for m, g in entry.members.items()],
        )
    )
    table = []
    for name, summary in report.items():

        def auc(score: str, summary: dict[str, Any] = summary) -> str:
            value = summary.get(score, {}).get("auroc")
            return "n/a" if value is None else f"{value:.4f}"

        ens = summary["ensemble P(machine)"]["tpr_at_fpr"]
        table.append(
            (
                name,
                str(summary["criterion"]["n"]),
                auc("criterion"),
                auc("-binoculars"),
                auc("ensemble P(machine)"),
                ens.get("0.01", "n/a") if not ens else f"{ens['0.01']:.3f}",
                "n/a" if not ens else f"{ens['0.05']:.3f}",
            )
        )
    print(f"AUROC on {where} texts:")
    print(format_table(("texts", "n", "criterion", "-binoculars", "ensemble", "ens TPR@1%FPR", "ens TPR@5%FPR"), table))
    return 0


def add_calibrate_command(subparsers: Any) -> None:
    """Add `detector calibrate` to the crucible command line."""
    detector = subparsers.add_parser("detector", help="detector tools (calibration)")
    sub = detector.add_subparsers(dest="detector_command", required=True, metavar="ACTION")
    cal = sub.add_parser(
        "calibrate",
        help="fit two-Gaussian parameters and a logistic ensemble on labelled texts; write a calibration file",
        description="Scores labelled texts in this process, fits per-member two-Gaussian parameters and a logistic "
        "regression over the members on the fitting pairs, writes a calibration file for the service "
        "(--calibration-file) and reports AUROC on the held-out pairs.",
    )
    cal.add_argument("--data", nargs="+", required=True, metavar="FILE", help="labelled data (formats as for detect)")
    cal.add_argument("--out", required=True, help="calibration file to write")
    cal.add_argument("--version", default="", help="version to stamp (default fit-<UTC time>)")
    cal.add_argument(
        "--holdout-fraction",
        type=float,
        default=0.0,
        help="fraction of each file's pairs (the last ones) kept out of the fit; quality is reported on "
        "them (default 0: in-sample report)",
    )
    cal.add_argument(
        "--leave-out",
        default="auto",
        choices=LEAVE_OUT,
        help="how the regularisation C is chosen: by held-out log-loss leaving one group of fitting texts out at a "
        "time, groups from file names DOMAIN_SOURCE.json (xsum_gpt-4.json: domain xsum, source gpt-4) or whole "
        "files; 'pair': cross-validation folds of pairs. auto (default): domain and source when the files name "
        "two or more, else each file when there are two or more, else pairs",
    )
    cal.add_argument("--description", default="", help="description stored in the calibration file")
    cal.add_argument(
        "--pairs-per-file",
        type=int,
        default=0,
        help="use only this many evenly spaced pairs of each file, split like the whole file (default 0: "
        "all); recorded in the calibration file",
    )
    cal.add_argument(
        "--features",
        default=",".join(("members", *_BY_PRODUCTS)),
        help="logistic-ensemble features: 'members' (every enabled member) and/or by-products "
        f"{', '.join(_BY_PRODUCTS)}, comma-separated (default: all)",
    )
    cal.add_argument(
        "--report",
        default="",
        help="quality report JSON: ROC points, AUROC, TPR at 1%%/5%% FPR per "
        "score, pooled and per file (default: OUT with suffix .roc.json)",
    )
    cal.add_argument("--plot", default="", help="ROC plot PNG (default: OUT with suffix .roc.png; needs matplotlib)")
    cal.add_argument("--no-plot", action="store_true", help="do not draw the ROC plot")
    model_args(cal)
    cal.set_defaults(handler=calibrate)

"""Detector commands: `crucible detect FILE|-` (scores, AUROC when labelled) and `crucible detector calibrate`.

Both run the models in this process by default; `crucible detect --address HOST:PORT` asks a running service instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

_HUMAN = {"0", "human", "original", "false", "real"}
_BY_PRODUCTS = ("log_likelihood", "log_rank", "entropy")
_MACHINE = {"1", "machine", "sampled", "true", "ai", "fake", "generated"}


class InputError(ValueError):
    """An input file is not in a format the commands read."""


def _label(value: Any, where: str) -> int:
    key = str(value).strip().lower()
    if key in _HUMAN:
        return 0
    if key in _MACHINE:
        return 1
    raise InputError(f"{where}: label {value!r} is neither human (0, human, original) nor machine (1, machine, sampled)")


def read_inputs(paths: Sequence[str]) -> tuple[list[str], list[int] | None, list[tuple[int, int]]]:
    """Texts, labels (1 = machine; None unless every text has one) and (file index, pair id) per text.

    A file is either the detect data format {"original": [human...], "sampled": [machine...]} (pair i shares id i
    within the file), a JSON list of strings, or JSON lines of strings or {"text": ..., "label": ...} objects
    (each row its own pair).
    """
    texts: list[str] = []
    labels: list[int | None] = []
    pairs: list[tuple[int, int]] = []
    for file_index, path in enumerate(paths):
        first = len(pairs)
        raw = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        name = "stdin" if path == "-" else path
        try:
            whole = json.loads(raw)
        except ValueError:
            whole = None
        if isinstance(whole, dict) and ("original" in whole or "sampled" in whole):
            for key, label in (("original", 0), ("sampled", 1)):
                values = whole.get(key) or []
                if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                    raise InputError(f"{name}: '{key}' must be a list of strings")
                texts += values
                labels += [label] * len(values)
                pairs += [(file_index, i) for i in range(len(values))]
            continue
        if isinstance(whole, list):
            rows: list[Any] = whole
        elif isinstance(whole, (str, dict)):
            rows = [whole]
        else:
            rows = []
            for n, line in enumerate(raw.splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except ValueError as exc:
                        raise InputError(f"{name}:{n}: not JSON ({exc})") from None
        for n, row in enumerate(rows, 1):
            if isinstance(row, str):
                texts.append(row)
                labels.append(None)
            elif isinstance(row, dict) and isinstance(row.get("text"), str):
                texts.append(row["text"])
                labels.append(_label(row["label"], f"{name} row {n}") if row.get("label") is not None else None)
            else:
                raise InputError(f"{name} row {n}: expected a string or an object with a 'text' string")
            pairs.append((file_index, len(pairs) - first))
    known = [label for label in labels if label is not None]
    full = known if labels and len(known) == len(labels) else None
    return texts, full, pairs


def auroc(labels: Sequence[int], scores: Sequence[float | None]) -> float | None:
    """Area under the ROC curve (scikit-learn) with higher score = machine; None when undefined."""
    from sklearn.metrics import roc_auc_score

    kept = [(y, s) for y, s in zip(labels, scores, strict=True) if s is not None]
    if len({y for y, _ in kept}) < 2:
        return None
    return float(roc_auc_score([y for y, _ in kept], [s for _, s in kept]))


# ---- in-process models ----------------------------------------------------------------------------------------------


#: DetectorConfig settings the in-process commands take as flags: the service's names, defaults, choices and help.
_MODEL_SETTINGS = (
    "model",
    "sampling_model",
    "classifier_model",
    "classifier_machine_label",
    "device",
    "dtype",
    "max_tokens",
    "min_reliable_tokens",
    "max_invisible_fraction",
    "model_cache_dir",
    "stats_kernel",
)


def _model_args(parser: argparse.ArgumentParser) -> None:
    from crucible.detector.config import DetectorConfig
    from crucible.runtime.config import add_setting_arguments

    group = parser.add_argument_group("models (in-process)")
    add_setting_arguments(group, DetectorConfig, _MODEL_SETTINGS)
    group.add_argument("--no-binoculars", action="store_true", help="disable the Binoculars member")
    group.add_argument("--batch-size", type=int, default=16, help="texts per forward pass")


def _load_detector(args: argparse.Namespace) -> Any:
    from crucible.detector.config import DetectorConfig
    from crucible.detector.engine import Detector

    # No per-call limits in-process: score_many splits the texts itself, and long texts are truncated to max_tokens.
    settings = DetectorConfig(
        **{name: getattr(args, name) for name in _MODEL_SETTINGS},
        binoculars=not args.no_binoculars,
        max_texts_per_call=1024,
        max_text_bytes=0,
    )
    detector = Detector.load(settings)
    if args.stats_kernel != "eager":
        detector.warm_up()  # compile now ("compile") or in the background ("auto")
    return detector


def _progress(done: int, total: int) -> None:
    print(f"\rscored {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)


def _in_process(args: argparse.Namespace, texts: list[str]) -> tuple[list[dict[str, Any]], str]:
    from crucible.detector.engine import score_many
    from crucible.detector.pipeline import load_calibration
    from crucible.detector.reliability import assess

    detector = _load_detector(args)
    calibration = load_calibration(detector, args.calibration_file)
    raw = score_many(detector, texts, batch_size=args.batch_size, progress=_progress)
    rows = []
    limits = detector.settings
    for i, r in enumerate(raw):
        members = r.member_raw()
        members = {m: members[m] for m in detector.enabled_members if m in members}
        sure = assess(
            texts[i],
            r.token_count - 1,
            min_tokens=limits.min_reliable_tokens,
            max_invisible_fraction=limits.max_invisible_fraction,
        )
        rows.append(
            {
                "index": i,
                "criterion": r.criterion,
                "probability": calibration.probability({**r.features(), **members}) if sure.reliable else None,
                "perplexity": r.perplexity,
                "token_count": r.token_count,
                "tokens_scored": r.token_count - 1,
                "reliable": sure.reliable,
                "unreliable_reason": sure.reason,
                "truncated": r.truncated,
                "members": members,
                "by_products": {"log_likelihood": r.log_likelihood, "log_rank": r.log_rank, "entropy": r.entropy},
            }
        )
    return rows, calibration.method


def _remote(args: argparse.Namespace, texts: list[str]) -> tuple[list[dict[str, Any]], str]:
    from crucible.api.detector.v1 import detector_service_pb2 as pb
    from crucible.api.detector.v1 import detector_service_pb2_grpc as pb_grpc

    names = {pb.MEMBER_FAST_DETECTGPT: "fast_detectgpt", pb.MEMBER_BINOCULARS: "binoculars", pb.MEMBER_CLASSIFIER: "classifier"}
    from crucible.clients.channel import cli_channel_config, open_sync_channel
    from crucible.clients.detector import UNRELIABLE_REASONS as reasons

    config = cli_channel_config("detector", args)  # token and TLS from flags, then the client config (TOML/env)
    rows: list[dict[str, Any]] = []
    method = "none"
    with open_sync_channel(config, "crucible.detector.v1.DetectorService") as channel:
        stub = pb_grpc.DetectorServiceStub(channel)
        info = stub.GetInfo(pb.GetInfoRequest(), timeout=args.timeout)
        step = max(1, min(64, info.limits.max_texts_per_call))
        for start in range(0, len(texts), step):
            reply = stub.Detect(
                pb.DetectRequest(texts=texts[start : start + step], skip_cache=args.skip_cache), timeout=args.timeout
            )
            method = pb.CalibrationMethod.Name(reply.calibration.method).removeprefix("CALIBRATION_METHOD_").lower()
            for d in reply.detections:
                rows.append(
                    {
                        "index": start + d.index,
                        "criterion": d.criterion,
                        "probability": d.probability if d.HasField("probability") else None,
                        "perplexity": d.perplexity,
                        "token_count": d.token_count,
                        "tokens_scored": d.tokens_scored,
                        "reliable": d.reliable,
                        "unreliable_reason": reasons.get(d.unreliable_reason, ""),
                        "truncated": d.truncated,
                        "members": {names[s.member]: s.raw_score for s in d.member_scores},
                        "by_products": {"log_likelihood": d.log_likelihood, "log_rank": d.log_rank, "entropy": d.entropy},
                        "cached": d.cached,
                    }
                )
            _progress(min(start + step, len(texts)), len(texts))
    return rows, method


def _summary(labels: list[int], rows: list[dict[str, Any]], method: str) -> list[tuple[str, str]]:
    """AUROC of each score (Binoculars negated: lower = machine) and of the calibrated probability."""
    out = [("criterion (fast_detectgpt)", auroc(labels, [r["criterion"] for r in rows]))]
    if all("binoculars" in r["members"] for r in rows):
        out.append(("-binoculars", auroc(labels, [-r["members"]["binoculars"] for r in rows])))
    if all("classifier" in r["members"] for r in rows):
        out.append(("classifier", auroc(labels, [r["members"]["classifier"] for r in rows])))
    if method != "none":
        out.append((f"probability ({method})", auroc(labels, [r["probability"] for r in rows])))
    return [(name, "n/a" if v is None else f"{v:.4f}") for name, v in out]


def _detect(args: argparse.Namespace) -> int:
    from crucible.clients.tables import format_table
    from crucible.runtime.errors import CrucibleError

    try:
        texts, labels, _pairs = read_inputs(args.files)
    except (OSError, InputError) as err:
        print(f"crucible detect: {err}", file=sys.stderr)
        return 2
    if not texts:
        print("crucible detect: no texts in the input", file=sys.stderr)
        return 2
    try:
        rows, method = _remote(args, texts) if args.address else _in_process(args, texts)
    except CrucibleError as err:
        print(f"crucible detect: {err.message}", file=sys.stderr)
        return 2
    except grpc.RpcError as err:  # which address failed and what to do; never the library's exception repr
        from crucible.clients.cli_common import report_rpc_error

        return report_rpc_error(err, "crucible detect", "detector", args.address)
    except Exception as err:  # model loading problems: say what failed, no traceback
        print(f"crucible detect: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    for row, text in zip(rows, texts, strict=True):
        if labels is not None:
            row["label"] = labels[row["index"]]
        if args.with_text:
            row["text"] = text
        print(json.dumps(row))
    if labels is not None:
        summary = _summary(labels, rows, method)
        print(json.dumps({"auroc": dict(summary)}) if args.json else format_table(("score", "AUROC"), summary), file=sys.stderr)
    return 0


# Scores of the quality report: name -> (how to read it from RawScores.features(), orientation: higher = machine).
_REPORT_SCORES = (
    ("criterion", "fast_detectgpt", 1.0),
    ("-binoculars", "binoculars", -1.0),
    ("classifier", "classifier", 1.0),
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


def _calibrate(args: argparse.Namespace) -> int:
    import datetime
    import hashlib

    import numpy as np

    from crucible.clients.tables import format_table
    from crucible.detector.calibration import Calibration, CalibrationError, CalibrationFile, fit_calibration
    from crucible.detector.engine import score_many
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
        detector = _load_detector(args)
        raw = score_many(detector, texts, batch_size=args.batch_size, progress=_progress)
        members = list(detector.enabled_members)
        features: list[str] = []
        for name in (x.strip() for x in args.features.split(",") if x.strip()):
            features += members if name == "members" else [name]
        rows = {i: raw[i].features() for i in range(len(texts))}
        human = [i for i in fit_idx if labels[i] == 0]
        machine = [i for i in fit_idx if labels[i] == 1]
        ids = detector.identities
        classifier = (ids["classifier"].name, ids["classifier"].revision) if "classifier" in ids else None
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
        entry = fit_calibration(
            [rows[i] for i in human],
            [rows[i] for i in machine],
            members=members,
            features=features,
            groups=[group[i] for i in (*human, *machine)],
            sampling=(ids["sampling"].name, ids["sampling"].revision),
            scoring=(ids["scoring"].name, ids["scoring"].revision),
            classifier=classifier,
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


def add_commands(subparsers: Any) -> None:
    """Add `detect` and `detector calibrate` to the crucible command line."""
    detect = subparsers.add_parser(
        "detect",
        help="score texts for machine authorship (in-process, or against a service with --address)",
        description="Print one JSON line of scores per text; with labels, print AUROC per score to stderr. Runs the "
        "models in this process (loading them, same settings as the service) unless --address names a running "
        "detector service, which then does the scoring (and its calibration and caches apply).",
    )
    detect.add_argument(
        "files",
        nargs="+",
        metavar="FILE|-",
        help='detect data format {"original": [...], "sampled": [...]}, a JSON list of strings, or '
        'JSON lines of strings / {"text", "label"} objects; \'-\' reads stdin',
    )
    detect.add_argument("--address", default="", help="HOST:PORT of a running detector service (default: in-process)")
    detect.add_argument(
        "--token",
        default=None,
        help="bearer token for a service with auth on (default: the client config: $CRUCIBLE_CLIENT_TOKEN, --token-file, ...)",
    )
    detect.add_argument(
        "--json",
        action="store_true",
        help="the AUROC summary (with labels) as one JSON object on stderr; scores are always JSON lines",
    )
    detect.add_argument("--timeout", type=float, default=600.0, help="deadline of each call to the service (seconds)")
    detect.add_argument("--skip-cache", action="store_true", help="service: bypass its caches")
    detect.add_argument("--calibration-file", default="", help="in-process: calibration file to apply")
    detect.add_argument("--with-text", action="store_true", help="include each text in its output line")
    _model_args(detect)
    from crucible.clients.channel import add_connection_arguments

    add_connection_arguments(detect, address=False, token=False, timeout=False)  # --token-file, --tls, --ca-file
    detect.set_defaults(handler=_detect)

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
    _model_args(cal)
    cal.set_defaults(handler=_calibrate)

"""Detector commands: `crucible detect FILE|-` (scores, AUROC when labelled) and `crucible detector calibrate`.

Both run the models in this process by default; `crucible detect --address HOST:PORT` asks a running service instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

_HUMAN = {"0", "human", "original", "false", "real"}
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


def read_inputs(paths: Sequence[str]) -> tuple[list[str], list[int] | None, list[int]]:
    """Texts, labels (1 = machine; None unless every text has one) and pair ids from files or '-' (stdin).

    A file is either the detect data format {"original": [human...], "sampled": [machine...]} (pair i shares id i
    within the file), a JSON list of strings, or JSON lines of strings or {"text": ..., "label": ...} objects.
    """
    texts: list[str] = []
    labels: list[int | None] = []
    pairs: list[int] = []
    for path in paths:
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
                pairs += list(range(len(values)))
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
            pairs.append(len(pairs))
    full = None if any(label is None for label in labels) or not labels else [int(x) for x in labels]  # type: ignore[arg-type]
    return texts, full, pairs


def auroc(labels: Sequence[int], scores: Sequence[float | None]) -> float | None:
    """Area under the ROC curve (scikit-learn) with higher score = machine; None when undefined."""
    from sklearn.metrics import roc_auc_score

    kept = [(y, s) for y, s in zip(labels, scores, strict=True) if s is not None]
    if len({y for y, _ in kept}) < 2:
        return None
    return float(roc_auc_score([y for y, _ in kept], [s for _, s in kept]))


# ---- in-process models ----------------------------------------------------------------------------------------------


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models (in-process)")
    g.add_argument("--model", default="smollm2-135m-instruct", help="scoring model: alias or local HF folder")
    g.add_argument("--sampling-model", default="", help="sampling model (default: the scoring model)")
    g.add_argument("--classifier-model", default="", help="local HF sequence-classification folder (optional)")
    g.add_argument("--classifier-machine-label", default="", help="id2label name meaning machine (default: auto)")
    g.add_argument("--no-binoculars", action="store_true", help="disable the Binoculars member")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    g.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    g.add_argument("--max-tokens", type=int, default=512, help="tokens scored per text (longer ones are truncated)")
    g.add_argument("--model-cache-dir", default="", help="prepared-model cache (default ~/.cache/crucible)")
    g.add_argument("--batch-size", type=int, default=16, help="texts per forward pass")


def _load_detector(args: argparse.Namespace) -> Any:
    from crucible.detector.engine import Detector, DetectorSettings

    settings = DetectorSettings(
        model=args.model, sampling_model=args.sampling_model, classifier_model=args.classifier_model,
        classifier_machine_label=args.classifier_machine_label, binoculars=not args.no_binoculars, device=args.device,
        dtype=args.dtype, model_cache_dir=args.model_cache_dir, max_tokens=args.max_tokens, max_texts_per_call=1024,
        max_text_bytes=0,
    )
    return Detector.load(settings)


def _progress(done: int, total: int) -> None:
    print(f"\rscored {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)


def _in_process(args: argparse.Namespace, texts: list[str]) -> tuple[list[dict[str, Any]], str]:
    from crucible.detector.engine import score_many
    from crucible.detector.pipeline import load_calibration

    detector = _load_detector(args)
    calibration = load_calibration(detector, args.calibration_file)
    raw = score_many(detector, texts, batch_size=args.batch_size, progress=_progress)
    rows = []
    for i, r in enumerate(raw):
        members = r.member_raw()
        members = {m: members[m] for m in detector.enabled_members if m in members}
        rows.append({"index": i, "criterion": r.criterion, "probability": calibration.probability(members),
                     "perplexity": r.perplexity, "token_count": r.token_count, "truncated": r.truncated,
                     "members": members})
    return rows, calibration.method


def _remote(args: argparse.Namespace, texts: list[str]) -> tuple[list[dict[str, Any]], str]:
    from crucible.api.detector.v1 import detector_service_pb2 as pb
    from crucible.api.detector.v1 import detector_service_pb2_grpc as pb_grpc

    names = {pb.MEMBER_FAST_DETECTGPT: "fast_detectgpt", pb.MEMBER_BINOCULARS: "binoculars",
             pb.MEMBER_CLASSIFIER: "classifier"}
    from crucible.clients.channel import cli_channel_config, open_sync_channel

    config = cli_channel_config("detector", args)  # token and TLS from flags, then the client config (TOML/env)
    rows: list[dict[str, Any]] = []
    method = "none"
    with open_sync_channel(config, "crucible.detector.v1.DetectorService") as channel:
        stub = pb_grpc.DetectorServiceStub(channel)
        info = stub.GetInfo(pb.GetInfoRequest(), timeout=args.timeout)
        step = max(1, min(64, info.limits.max_texts_per_call))
        for start in range(0, len(texts), step):
            reply = stub.Detect(pb.DetectRequest(texts=texts[start : start + step], skip_cache=args.skip_cache),
                                timeout=args.timeout)
            method = pb.CalibrationMethod.Name(reply.calibration.method).removeprefix("CALIBRATION_METHOD_").lower()
            for d in reply.detections:
                rows.append({"index": start + d.index, "criterion": d.criterion,
                             "probability": d.probability if d.HasField("probability") else None,
                             "perplexity": d.perplexity, "token_count": d.token_count, "truncated": d.truncated,
                             "members": {names[s.member]: s.raw_score for s in d.member_scores}, "cached": d.cached})
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
    from crucible.mesh import format_table
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
    except Exception as err:  # gRPC errors and model loading problems: say what failed, no traceback
        detail = err.details() if isinstance(err, grpc.RpcError) and hasattr(err, "details") else err
        print(f"crucible detect: {type(err).__name__}: {detail}", file=sys.stderr)
        return 1
    for row, text in zip(rows, texts, strict=True):
        if labels is not None:
            row["label"] = labels[row["index"]]
        if args.with_text:
            row["text"] = text
        print(json.dumps(row))
    if labels is not None:
        summary = _summary(labels, rows, method)
        print(json.dumps({"auroc": dict(summary)}) if args.json else format_table(("score", "AUROC"), summary),
              file=sys.stderr)
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    import datetime

    from crucible.detector.calibration import CalibrationError, CalibrationFile, fit_calibration
    from crucible.detector.engine import score_many
    from crucible.mesh import format_table
    from crucible.runtime.errors import CrucibleError

    try:
        texts, labels, pairs = read_inputs(args.data)
    except (OSError, InputError) as err:
        print(f"crucible detector calibrate: {err}", file=sys.stderr)
        return 2
    if labels is None:
        print("crucible detector calibrate: every text needs a label (use the detect data format or 'label' fields)",
              file=sys.stderr)
        return 2
    if not 0.0 <= args.holdout_fraction < 1.0:
        print("crucible detector calibrate: --holdout-fraction must be in [0, 1)", file=sys.stderr)
        return 2
    # Split by pair id, so a human text and its machine continuation (same prefix) land on the same side and the
    # human texts shared by several data files never appear on both sides.
    cut = {p for p in pairs}
    cut_at = int(round((max(cut) + 1) * (1.0 - args.holdout_fraction))) if cut else 0
    fit_idx = [i for i, p in enumerate(pairs) if p < cut_at]
    eval_idx = [i for i, p in enumerate(pairs) if p >= cut_at]
    try:
        detector = _load_detector(args)
        raw = score_many(detector, texts, batch_size=args.batch_size, progress=_progress)
        members = list(detector.enabled_members)
        human = [raw[i].member_raw() for i in fit_idx if labels[i] == 0]
        machine = [raw[i].member_raw() for i in fit_idx if labels[i] == 1]
        ids = detector.identities
        classifier = (ids["classifier"].name, ids["classifier"].revision) if "classifier" in ids else None
        version = args.version or "fit-" + datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        entry = fit_calibration(
            human, machine, members=members, sampling=(ids["sampling"].name, ids["sampling"].revision),
            scoring=(ids["scoring"].name, ids["scoring"].revision), classifier=classifier, version=version,
            fitted_on={"files": [str(p) for p in args.data], "human": len(human), "machine": len(machine),
                       "pairs": f"0..{cut_at - 1}", "dtype": ids["scoring"].dtype, "max_tokens": args.max_tokens},
        )
    except (CalibrationError, CrucibleError, ValueError) as err:
        print(f"crucible detector calibrate: {getattr(err, 'message', err)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    CalibrationFile(version, str(out), (entry,)).write(out)
    print(f"wrote {out} (version {version}; fitted on {len(human)} human + {len(machine)} machine texts, "
          f"pairs 0..{cut_at - 1})")
    print(format_table(("member", "mu0", "sigma0", "mu1", "sigma1"),
                       [(m, *(f"{v:.4f}" for v in (g.mu0, g.sigma0, g.mu1, g.sigma1))) for m, g in entry.members.items()]))
    from crucible.detector.calibration import Calibration

    cal = Calibration("logistic_ensemble", version, str(out), entry.members, entry.ensemble)
    split = eval_idx if eval_idx else fit_idx
    where = f"held-out pairs {cut_at}..{max(pairs)}" if eval_idx else "the fitting data (in-sample: no hold-out)"
    ys = [labels[i] for i in split]
    rows = [(name, f"{v:.4f}" if v is not None else "n/a") for name, v in (
        ("criterion (fast_detectgpt)", auroc(ys, [raw[i].criterion for i in split])),
        ("-binoculars", auroc(ys, [-raw[i].binoculars for i in split]) if "binoculars" in members else None),
        ("classifier", auroc(ys, [raw[i].classifier for i in split]) if "classifier" in members else None),
        ("two-gaussian P(machine) of the criterion",
         auroc(ys, [cal.member_probability("fast_detectgpt", raw[i].criterion) for i in split])),
        ("logistic ensemble P(machine)", auroc(ys, [cal.probability(raw[i].member_raw()) for i in split])),
    )]
    print(f"AUROC on {where} ({len(split)} texts):")
    print(format_table(("score", "AUROC"), rows))
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
    detect.add_argument("files", nargs="+", metavar="FILE|-",
                        help="detect data format {\"original\": [...], \"sampled\": [...]}, a JSON list of strings, or "
                        "JSON lines of strings / {\"text\", \"label\"} objects; '-' reads stdin")
    detect.add_argument("--address", default="", help="HOST:PORT of a running detector service (default: in-process)")
    detect.add_argument("--token", default=None, help="bearer token for a service with auth on (default: the client "
                                                      "config: $CRUCIBLE_CLIENT_TOKEN, --token-file, ...)")
    detect.add_argument("--json", action="store_true",
                        help="the AUROC summary (with labels) as one JSON object on stderr; scores are always JSON lines")
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
    cal.add_argument("--holdout-fraction", type=float, default=0.0,
                     help="fraction of pairs (the last ones) kept out of the fit and used to report AUROC (default 0)")
    _model_args(cal)
    cal.set_defaults(handler=_calibrate)

"""Detector commands: `crucible detect FILE|-` (scores, AUROC when labelled) and `crucible detector calibrate`
(crucible.detector.cli_calibrate). Both run the models in this process by default; `crucible detect --address
HOST:PORT` asks a running service instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import grpc

from crucible.detector.cli_calibrate import add_calibrate_command
from crucible.detector.cli_inputs import InputError, auroc, load_detector, model_args, progress, read_inputs

__all__ = ["InputError", "add_commands", "read_inputs"]


def _in_process(args: argparse.Namespace, texts: list[str]) -> tuple[list[dict[str, Any]], str]:
    from crucible.detector.core import score_many
    from crucible.detector.pipeline import load_calibration
    from crucible.detector.reliability import assess

    detector = load_detector(args)
    calibration = load_calibration(detector, args.calibration_file)
    raw = score_many(detector, texts, batch_size=args.batch_size, progress=progress)
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

    names = {
        pb.MEMBER_FAST_DETECTGPT: "fast_detectgpt",
        pb.MEMBER_BINOCULARS: "binoculars",
        pb.MEMBER_CLASSIFIER: "classifier",
        pb.MEMBER_LIKELIHOOD: "likelihood",
    }
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
            progress(min(start + step, len(texts)), len(texts))
    return rows, method


def _summary(labels: list[int], rows: list[dict[str, Any]], method: str) -> list[tuple[str, str]]:
    """AUROC of each score (Binoculars negated: lower = machine) and of the calibrated probability."""
    out = [("criterion (fast_detectgpt)", auroc(labels, [r["criterion"] for r in rows]))]
    if all("binoculars" in r["members"] for r in rows):
        out.append(("-binoculars", auroc(labels, [-r["members"]["binoculars"] for r in rows])))
    if all("classifier" in r["members"] for r in rows):
        out.append(("classifier", auroc(labels, [r["members"]["classifier"] for r in rows])))
    if all("likelihood" in r["members"] for r in rows):
        out.append(("likelihood", auroc(labels, [r["members"]["likelihood"] for r in rows])))
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
    model_args(detect)
    from crucible.clients.channel import add_connection_arguments

    add_connection_arguments(detect, address=False, token=False, timeout=False)  # --token-file, --tls, --ca-file
    detect.set_defaults(handler=_detect)
    add_calibrate_command(subparsers)

"""Inputs of the detector commands: labelled text files (the detect data format, JSON lists, JSON lines), AUROC,
and the in-process model flags and loading shared by `crucible detect` and `crucible detector calibrate`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
    "likelihood_model",
    "device",
    "dtype",
    "max_tokens",
    "min_reliable_tokens",
    "max_invisible_fraction",
    "model_cache_dir",
    "stats_kernel",
)


def model_args(parser: argparse.ArgumentParser) -> None:
    from crucible.detector.config import DetectorConfig
    from crucible.runtime.config import add_setting_arguments

    group = parser.add_argument_group("models (in-process)")
    add_setting_arguments(group, DetectorConfig, _MODEL_SETTINGS)
    group.add_argument("--no-binoculars", action="store_true", help="disable the Binoculars member")
    group.add_argument("--batch-size", type=int, default=16, help="texts per forward pass")


def load_detector(args: argparse.Namespace) -> Any:
    from crucible.detector.config import DetectorConfig
    from crucible.detector.core import Detector

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


def progress(done: int, total: int) -> None:
    print(f"\rscored {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)

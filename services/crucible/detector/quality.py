"""Detection quality of labelled scores: ROC points, AUROC and TPR at fixed FPR, calibration (ECE, reliability bins).

Used by `crucible detector calibrate`; pure numpy/scikit-learn, matplotlib only for the plot (the `plot` extra).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: False-positive rates at which the true-positive rate is reported.
FPR_POINTS = (0.01, 0.05)


def roc_summary(labels: Sequence[int], scores: Sequence[float], *, max_points: int = 200) -> dict[str, Any]:
    """AUROC, TPR at 1% and 5% FPR and the ROC points of `scores` (higher = machine) against labels (1 = machine).

    The TPR at a false-positive rate x is the highest TPR whose FPR does not exceed x (a threshold one can set on
    these data); with n human texts the FPR moves in steps of 1/n, so 1% needs at least 100 human texts to mean
    more than "no false positive at all". At most `max_points` ROC points are kept (evenly by index, ends kept).
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or len(set(y.tolist())) < 2 or not np.isfinite(s).all():
        return {"n": int(y.size), "auroc": None, "tpr_at_fpr": {}, "roc": {"fpr": [], "tpr": []}}
    fpr, tpr, _ = roc_curve(y, s)
    at = {f"{x:g}": float(tpr[fpr <= x + 1e-12].max()) for x in FPR_POINTS}
    if fpr.size > max_points:
        keep = np.unique(np.linspace(0, fpr.size - 1, max_points).round().astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return {
        "n": int(y.size),
        "human": int((y == 0).sum()),
        "machine": int((y == 1).sum()),
        "auroc": float(roc_auc_score(y, s)),
        "tpr_at_fpr": at,
        "roc": {"fpr": [round(float(v), 6) for v in fpr], "tpr": [round(float(v), 6) for v in tpr]},
    }


def reliability_bins(labels: Sequence[int], probabilities: Sequence[float], *, bins: int = 10) -> list[dict[str, Any]]:
    """Equal-width bins of P(machine) over [0, 1]: per non-empty bin its range, count, mean probability and the
    observed share of machine texts (the points of a reliability diagram). A probability of exactly 1 falls in the
    last bin."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probabilities, dtype=np.float64)
    if y.shape != p.shape:
        raise ValueError(f"{y.size} labels for {p.size} probabilities")
    if bins < 1:
        raise ValueError("bins must be at least 1")
    if p.size and (not np.isfinite(p).all() or p.min() < 0.0 or p.max() > 1.0):
        raise ValueError("probabilities must be finite and within [0, 1]")
    index = np.minimum((p * bins).astype(np.int64), bins - 1)
    out = []
    for b in range(bins):
        chosen = index == b
        n = int(chosen.sum())
        if n:
            out.append(
                {
                    "low": b / bins,
                    "high": (b + 1) / bins,
                    "n": n,
                    "mean_probability": float(p[chosen].mean()),
                    "machine_share": float(y[chosen].mean()),
                }
            )
    return out


def expected_calibration_error(labels: Sequence[int], probabilities: Sequence[float], *, bins: int = 10) -> float:
    """ECE: sum over equal-width bins of (bin size / n) * |observed machine share - mean P(machine)|, in [0, 1]
    (0 = a probability of 0.9 is right 9 times in 10). NaN for no texts."""
    total = len(labels)
    if total == 0:
        return float("nan")
    return float(
        sum(
            b["n"] / total * abs(b["machine_share"] - b["mean_probability"])
            for b in reliability_bins(labels, probabilities, bins=bins)
        )
    )


def quality_report(groups: Mapping[str, tuple[Sequence[int], Mapping[str, Sequence[float]]]]) -> dict[str, Any]:
    """{group: {score: roc_summary}} for each group (e.g. "all" and each file) of (labels, {score name: scores})."""
    return {
        name: {score: roc_summary(labels, values) for score, values in scores.items()}
        for name, (labels, scores) in groups.items()
    }


def plot_roc(
    report: Mapping[str, Mapping[str, Any]], path: Path, *, title: str = "", scores: Sequence[str] | None = None
) -> None:
    """Write a PNG with one ROC panel per group of `report` (log-scaled FPR axis from 0.1%, chance line dashed).

    Raises RuntimeError when matplotlib is not installed (pip install 'crucible[plot]').
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("the ROC plot needs matplotlib: pip install 'crucible[plot]'") from exc
    names = list(report)
    cols = min(4, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.9 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        group = report[name]
        for score in scores or list(group):
            summary = group.get(score)
            if not summary or summary.get("auroc") is None:
                continue
            fpr = np.clip(np.asarray(summary["roc"]["fpr"]), 1e-3, 1.0)
            ax.step(fpr, summary["roc"]["tpr"], where="post", linewidth=1.4, label=f"{score} ({summary['auroc']:.3f})")
        grid = np.logspace(-3, 0, 100)
        ax.plot(grid, grid, linestyle="--", color="grey", linewidth=0.8)
        for x in FPR_POINTS:
            ax.axvline(x, color="lightgrey", linewidth=0.8, zorder=0)
        ax.set_xscale("log")
        ax.set_xlim(1e-3, 1.0)
        ax.set_ylim(0.0, 1.01)
        first: dict[str, Any] = next((v for v in group.values() if v.get("auroc") is not None), {})
        ax.set_title(f"{name} (n={first.get('n', 0)})", fontsize=9)
        ax.set_xlabel("false-positive rate (human flagged)", fontsize=8)
        ax.set_ylabel("true-positive rate", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6.5, loc="lower right", title="score (AUROC)", title_fontsize=6.5)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)

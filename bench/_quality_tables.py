"""Tables and plots of bench/detector_quality.py's report: the markdown the README quotes and the reliability diagram.

Kept apart from the scoring and fitting so that each file stays readable (and under 600 lines).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: Each member's raw score oriented so that higher means machine.
MEMBER_ORIENTATION = {"fast_detectgpt": 1.0, "binoculars": -1.0, "log_likelihood": 1.0, "log_rank": -1.0, "entropy": -1.0}


def plot_reliability(out: dict[str, Any], path: Path, *, title: str) -> None:
    """Reliability diagram of each candidate on the held-out texts (observed machine share against mean P(machine),
    marker area = texts in the bin), with ECE in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 4.8))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    # Texts of a domain the fit never saw when there are two domains (every scored text), else the held-out half;
    # the chosen candidate and the single members that matter most, so the diagram stays readable.
    block = out.get("cross_domain") or out["held_out"]
    shown = dict.fromkeys([out.get("shipped", out["chosen"]), "criterion", "binoculars", "log_likelihood"])
    for name, per in ((n, block[n]) for n in shown if n in block):
        summary = per.get("all")
        if not summary:
            continue
        bins = summary["bins"]
        ax.plot(
            [b["mean_probability"] for b in bins],
            [b["machine_share"] for b in bins],
            marker="o",
            linewidth=1.2,
            label=f"{name} (ECE {summary['ece']:.3f}, n={summary['n']})",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean P(machine) in the bin", fontsize=8)
    ax.set_ylabel("share of machine texts in the bin", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6.5, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _f(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def markdown(out: dict[str, Any]) -> str:
    """The README tables from a report."""
    counts = ", ".join(f"{k} {v['human']}+{v['machine']}" for k, v in out["files"].items())
    lines = [f"texts scored: {out['texts']} ({counts})", ""]
    if out.get("first_tokens"):
        lines[-1:] = [f"each text cut to its first {out['first_tokens']} tokens (--first-tokens)", ""]
    lines.append("| tokens scored (after the shared prefix) | " + " | ".join(out["auroc_by_length"]) + " |")
    lines.append("|---" * (len(out["auroc_by_length"]) + 1) + "|")
    lines.append("| criterion AUROC | " + " | ".join(_f(v["criterion"]) for v in out["auroc_by_length"].values()) + " |")
    lines.append(
        "| log-likelihood AUROC | " + " | ".join(_f(v["log_likelihood"]) for v in out["auroc_by_length"].values()) + " |"
    )
    lines.append("")
    names = list(next(iter(out["leave_one_group_out"].values()))["combinations"]) if out["leave_one_group_out"] else []
    lines.append("| left out | n | best member | " + " | ".join(names) + " |")
    lines.append("|---" * (len(names) + 3) + "|")
    for g, v in out["leave_one_group_out"].items():
        best = max((x for x in v["members"].items() if x[1] is not None), key=lambda x: x[1])
        lines.append(
            f"| {g} | {v['n']} | {best[0]} {_f(best[1])} | " + " | ".join(_f(v["combinations"][n]) for n in names) + " |"
        )
    lines.append("| worst left-out group | | | " + " | ".join(_f(out["worst_left_out_auroc"][n]) for n in names) + " |")
    lines.append("")
    lines.append(
        "holds up: "
        + ", ".join(f"{k}: {v}" for k, v in out["holds_up"].items())
        + f"; chosen: {out['chosen']}"
        + (f"; shipped (--combination): {out['shipped']}" if out.get("shipped", out["chosen"]) != out["chosen"] else "")
    )
    if out.get("collinear"):
        lines.append("not eligible (near-duplicate features, |r|): " + ", ".join(f"{k} {v}" for k, v in out["collinear"].items()))
    lines.append("C: " + ", ".join(f"{k}: {v['c']:g}" for k, v in out["regularisation"].items()))
    lines.append("")
    members = [m for m in next(iter(out["raw_auroc"].values())) if m != "n"]
    lines.append("| raw AUROC, every scored text | n | " + " | ".join(members) + " |")
    lines.append("|---" * (len(members) + 2) + "|")
    for g, v in out["raw_auroc"].items():
        lines.append(f"| {g} | {v['n']} | " + " | ".join(_f(v[m]) for m in members) + " |")
    lines.append("")
    lines.append("AUROC / TPR@1%FPR / TPR@5%FPR / ECE of each candidate probability:")
    lines.append("")
    lines.append(_quality_table(out["held_out"], "held-out half (fitted on the first halves)"))
    if out.get("cross_domain"):
        lines.append("")
        lines.append(_quality_table(out["cross_domain"], "file (fitted on the other domain)"))
    return "\n".join(lines)


def _quality_table(block: dict[str, Any], what: str) -> str:
    """One row per file, one column per candidate: AUROC / TPR@1%FPR / TPR@5%FPR / ECE."""
    names = list(block)
    groups = list(next(iter(block.values()))) if names else []
    lines = [f"| {what} | n | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
    for g in groups:
        cells = []
        for n in names:
            v = block[n].get(g)
            cells.append(
                "n/a" if v is None else " / ".join(_f(v[k]) for k in ("auroc", "tpr_at_1pct_fpr", "tpr_at_5pct_fpr", "ece"))
            )
        lines.append(f"| {g} | {block[names[0]][g]['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)

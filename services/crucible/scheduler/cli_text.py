"""How the `crucible jobs` commands show a job: its state's name, money, progress bar, end reason and live line.

Plain functions of a Job message (no I/O), used by the CLI and tested on their own.
"""

from __future__ import annotations

import datetime as dt

from crucible.api.scheduler.v1 import job_pb2


def state_name(state: int) -> str:
    """'RUNNING' for JOB_STATE_RUNNING."""
    return job_pb2.JobState.Name(job_pb2.JobState.ValueType(state)).removeprefix("JOB_STATE_")


def money(job: job_pb2.Job) -> tuple[str, str]:
    priced = not job.offer.price_source.startswith("unknown")
    est = f"${job.cost.estimated_usd:.4f}" if priced else "unknown"
    spent = f"${job.cost.spent_usd:.4f}" if priced else "unknown"
    return est, spent


TERMINAL = (job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED)


def progress_text(job: job_pb2.Job, width: int = 24) -> str:
    """'[#####-----] 512/2000 loss 1.98 ETA 0:03:12' from the job's progress; an ended job has no ETA, and a succeeded
    one shows its last step as the whole run (a trainer's last step is often numbered total-1)."""
    p = job.progress
    parts = []
    ended = job.state in TERMINAL
    if p.HasField("step") and p.HasField("total_steps") and p.total_steps:
        step = p.total_steps if job.state == job_pb2.JOB_STATE_SUCCEEDED else p.step
        done = min(1.0, step / p.total_steps)
        parts.append(f"[{'#' * int(done * width)}{'-' * (width - int(done * width))}] {step}/{p.total_steps}")
    elif p.HasField("step"):
        parts.append(f"step {p.step}")
    if p.HasField("epoch"):
        parts.append(f"epoch {p.epoch}/{p.total_epochs}")
    for key in ("loss", "train_loss", "val_loss"):
        if key in p.metrics:
            parts.append(f"{key} {p.metrics[key]:.4g}")
    if p.HasField("eta") and not ended:
        parts.append(f"ETA {dt.timedelta(seconds=int(p.eta.seconds))}")
    return " ".join(parts)


def end_reason(job: job_pb2.Job) -> str:
    """Why a failed or cancelled job ended (its last transition's reason); '' for any other job."""
    if job.state not in (job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED) or not job.transitions:
        return ""
    return job.transitions[-1].reason


def status_line(job: job_pb2.Job) -> str:
    """One line of the live view: state, progress bar, latest loss, ETA, cost so far."""
    _est, spent = money(job)
    return f"{state_name(job.state):<12} {progress_text(job)}  cost so far {spent}".rstrip()

"""The folder of each job on the scheduler's host: `<state>/jobs/<id>/` with work/, logs/, attempts/ and the code
manifest (which files of work/ are the job's unchanged code and inputs, not outputs).
"""

from __future__ import annotations

import json
from pathlib import Path

from crucible.scheduler.persistence.records import STREAMS

#: Regular files of work/ that are code or inputs: path -> [size, mtime_ns] (see joboutputs.code_manifest).
Manifest = dict[str, list[int]]


class JobFolders:
    """Paths of a job's folder and the small files the engine keeps there."""

    def __init__(self, jobs_dir: Path) -> None:
        self.jobs_dir = jobs_dir
        self.jobs_dir.mkdir(parents=True, exist_ok=True)

    def job_dir(self, job_id: str) -> Path:
        """The job's folder: work/ (working directory), logs/, attempts/."""
        return self.jobs_dir / job_id

    def work(self, job_id: str) -> Path:
        """The job's working directory (its code, inputs and outputs)."""
        return self.job_dir(job_id) / "work"

    def log_path(self, job_id: str, stream: str) -> Path:
        """The mirrored log of one stream, every attempt in order."""
        return self.job_dir(job_id) / "logs" / f"{stream}.log"

    def log_sizes(self, job_id: str) -> dict[str, int]:
        """Current size of each mirrored log (where the next attempt's output starts)."""
        sizes = {}
        for stream in STREAMS:
            try:
                sizes[stream] = self.log_path(job_id, stream).stat().st_size
            except FileNotFoundError:
                sizes[stream] = 0
        return sizes

    def manifest(self, job_id: str) -> Manifest:
        """The code manifest ({} when missing or unreadable)."""
        try:
            manifest: Manifest = json.loads((self.job_dir(job_id) / "code_manifest.json").read_text())
            return manifest
        except (OSError, ValueError):
            return {}

    def write_manifest(self, job_id: str, manifest: Manifest) -> None:
        """Replace the code manifest."""
        (self.job_dir(job_id) / "code_manifest.json").write_text(json.dumps(manifest))

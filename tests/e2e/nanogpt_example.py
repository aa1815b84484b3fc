"""The nanoGPT example as the scheduler's end-to-end tests run it: where it lives and a tiny model that trains in seconds.

Shared by test_scheduler_nanogpt.py (cancel, download, resume) and test_storage_resume.py (resume on a fresh machine).
"""

from __future__ import annotations

from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "nanogpt"

#: examples/nanogpt/train.py flags: one layer, 32 wide, checkpoints every 20 iterations, one thread, no sampling.
TINY_MODEL = {
    "n-layer": 1,
    "n-head": 2,
    "n-embd": 32,
    "block-size": 32,
    "batch-size": 8,
    "eval-iters": 2,
    "eval-interval": 50,
    "log-interval": 5,
    "checkpoint-interval": 20,
    "threads": 1,
    "sample-chars": 0,
}
TINY = [part for name, value in TINY_MODEL.items() for part in (f"--{name}", str(value))]

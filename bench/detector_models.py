"""Benchmark of the detector's scoring models side by side: SmolLM2 alone, Gemma-3-270M alone, and the pair (Gemma's
criterion with SmolLM2 as the likelihood member): start-up and texts/s of the in-process core on the same texts.

`python bench/detector_models.py [--texts 48 --tokens 192 --batch 8 --dtype auto]`. Without the Gemma packages (a set-up
other than `make`'s) only SmolLM2 is measured, and the script says so. Every configuration is measured in this one process, in
turn, so the ratios compare like with like; the load average is printed with them.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from detector import make_texts

from crucible.clients.tables import format_table
from crucible.detector.config import DetectorConfig
from crucible.detector.core import Detector, score_many
from crucible.models import resolve_model

GEMMA = "gemma-3-270m"
SMOLLM2 = "smollm2-135m-instruct"


def gemma_installed() -> bool:
    try:
        resolve_model(GEMMA, prepare=True)
    except Exception as err:  # not installed, or not converted and cannot be: measured without it
        print(f"{GEMMA} is not available ({err}); measuring {SMOLLM2} only")
        return False
    return True


def measure(settings: DetectorConfig, texts: list[str], batch: int) -> tuple[float, float]:
    """(seconds to load and warm up, texts/s of score_many) for one configuration."""
    t0 = time.perf_counter()
    detector = Detector.load(settings)
    detector.warm_up()
    loaded = time.perf_counter() - t0
    score_many(detector, texts[:batch], batch_size=batch)  # allocation pass, not timed
    t1 = time.perf_counter()
    score_many(detector, texts, batch_size=batch)
    return loaded, len(texts) / (time.perf_counter() - t1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--texts", type=int, default=48, help="texts per measurement (default 48)")
    parser.add_argument("--tokens", type=int, default=192, help="SmolLM2 tokens per text (default 192)")
    parser.add_argument("--batch", type=int, default=8, help="texts per forward pass (default 8)")
    parser.add_argument("--dtype", default="auto", help="model dtype (default auto: bf16 where the CPU has it)")
    args = parser.parse_args()
    tokenizer = resolve_model(SMOLLM2, prepare=True)
    from transformers import AutoTokenizer

    texts = make_texts(AutoTokenizer.from_pretrained(tokenizer.path, local_files_only=True), args.texts, args.tokens)
    common = dict(device="cpu", dtype=args.dtype, max_texts_per_call=1024, max_text_bytes=0, stats_kernel="eager")
    configs = [(SMOLLM2, DetectorConfig(model=SMOLLM2, **common))]
    if gemma_installed():
        configs += [
            (GEMMA, DetectorConfig(model=GEMMA, **common)),
            (f"{GEMMA} + {SMOLLM2} likelihood", DetectorConfig(model=GEMMA, likelihood_model=SMOLLM2, **common)),
        ]
    rows = []
    first = 0.0
    for name, settings in configs:
        loaded, per_s = measure(settings, texts, args.batch)
        first = first or per_s
        rows.append((name, f"{loaded:.1f}", f"{per_s:.2f}", f"{first / per_s:.2f}x"))
    print(f"{len(texts)} texts of {args.tokens} SmolLM2 tokens, batch {args.batch}, dtype {args.dtype}, eager statistics")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(format_table(("scoring models", "load + warm-up s", "texts/s", "CPU time vs SmolLM2"), rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

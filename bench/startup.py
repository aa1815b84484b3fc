"""Benchmark of `crucible up`: seconds until each of the five services is SERVING, cold and warm, and the detector's
texts/s in its first seconds after start against its warm speed, with each model service's start-up phases.

Cold = a fresh model cache folder holding only what `crucible models prepare` makes (no compiled kernels yet);
warm = the same folder started again. Run it on a quiet machine: it prints the load average with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _mesh import free_base_port

from crucible.clients.mesh import Mesh
from crucible.clients.tables import format_table
from crucible.mesh import MODEL_SERVICES, SERVICES
from crucible.models.registry import default_cache_dir

SENTENCES = (
    "The committee met on Tuesday to review the budget and agreed to postpone the vote until next month.",
    "Researchers found that the new alloy kept its strength at temperatures well above what earlier designs allowed.",
    "After the storm, volunteers cleared the roads and checked on elderly neighbours who lived alone.",
    "The museum's new wing displays tools, letters and photographs from the town's first hundred years.",
)


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def fresh_cache(source: Path, convert: bool) -> tuple[Path, float]:
    """A new cache folder as `crucible models prepare` leaves it (converted models and the detector's compiled kernel),
    and the seconds that command took. Without `convert` the converted folders are hard links to those in `source`
    (the same files), so the command only compiles the kernel."""
    root = Path(tempfile.mkdtemp(prefix="crucible-startup-cache-"))
    if not convert:
        shutil.copytree(source / "models", root / "models", copy_function=os.link)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "crucible", "models", "prepare", "--cache-dir", str(root)], check=True, stdout=subprocess.DEVNULL
    )
    return root, time.perf_counter() - started


def _text(i: int, words: int) -> str:
    base = " ".join(SENTENCES[j % len(SENTENCES)] for j in range(i % len(SENTENCES), i % len(SENTENCES) + 6))
    return f"Report {i}: " + " ".join(base.split()[:words])  # distinct texts: no cache hit


async def detector_speed(base: int, seconds: float, batch: int, words: int, first: int) -> tuple[float, int]:
    """Texts/s of back-to-back Detect calls of `batch` distinct texts (cache skipped) for `seconds`."""
    done, i = 0, first
    async with Mesh.local(base) as mesh:
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            texts = [_text(i + k, words) for k in range(batch)]
            i += batch
            await mesh.detector.detect(texts, skip_cache=True, timeout=120)
            done += batch
        elapsed = time.perf_counter() - start
    return done / elapsed, i


def phases(log_dir: Path) -> dict[str, dict[str, Any]]:
    """Each service's start-up record (its "NAME ready" line) and the fork server's preload report."""
    out: dict[str, dict[str, Any]] = {}
    for name in SERVICES:
        path = log_dir / f"{name}.log"
        for line in path.read_text().splitlines() if path.exists() else []:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("msg") == f"{name} ready" and "startup" in record:
                out[name] = record["startup"]
    preload = log_dir / "preload.log"
    for line in preload.read_text().splitlines() if preload.exists() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("msg") == "fork server ready":
            out["preload"] = record
    return out


async def one_start(cache: Path, label: str, args: argparse.Namespace) -> dict[str, Any]:
    base = free_base_port()
    log_dir = Path(tempfile.mkdtemp(prefix=f"crucible-startup-{label}-"))
    env = {**os.environ, "CRUCIBLE_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1", "CRUCIBLE_STATE_DIR": str(log_dir / "state")}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)  # compiled kernels live under the cache being measured
    if args.no_preload:
        env["CRUCIBLE_PRELOAD"] = "0"
    load_before = load_average()
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "crucible", "up", "--no-console", "--base-port", str(base), "--log-dir", str(log_dir)]
    cmd += ["--startup-timeout", "900"]  # a loaded machine must give a figure, not a timeout
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    ready: dict[str, float] = {}
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            words = line.split()
            if len(words) >= 4 and words[0] in SERVICES and words[1:3] == ["ready", "in"]:
                ready[words[0]] = time.perf_counter() - started  # from the command, interpreter start included
            if line.startswith(("serving;", "crucible up:")):
                break
        total = time.perf_counter() - started
        if len(ready) != len(SERVICES):
            raise RuntimeError(f"{label}: the mesh did not come up; logs in {log_dir}")
        first, next_id = await detector_speed(base, args.window, args.batch, args.words, 0)
        warm, _ = await detector_speed(base, args.window, args.batch, args.words, next_id)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
    return {
        "label": label,
        "ready": ready,
        "all_serving_s": total,
        "first_window_texts_s": first,
        "warm_texts_s": warm,
        "load_before": load_before,
        "load_after": load_average(),
        "phases": phases(log_dir),
        "log_dir": str(log_dir),
    }


def _phase_rows(runs: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    rows = []
    for run in runs:
        for name in ("preload", *MODEL_SERVICES):
            record = run["phases"].get(name)
            if record is None:
                continue
            if name == "preload":
                rows.append((run["label"], "fork server (imports)", f"{record['wall_s']:.1f}", f"{record['cpu_s']:.1f}", ""))
                continue
            detail = ", ".join(f"{p} {v['wall_s']:.1f}/{v['cpu_s']:.1f}" for p, v in record["phases"].items())
            rows.append((run["label"], name, f"{record['process_s']:.1f}", f"{record['cpu_s']:.1f}", detail))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--window", type=float, default=30.0, help="seconds of each detector speed window (default 30)")
    parser.add_argument("--batch", type=int, default=8, help="texts per Detect call")
    parser.add_argument("--words", type=int, default=60, help="words per text")
    parser.add_argument("--warm-runs", type=int, default=1, help="warm starts after the cold one")
    parser.add_argument("--convert", action="store_true", help="convert the models again into the fresh cache (slow)")
    parser.add_argument("--no-preload", action="store_true", help="start every service as a plain process (the old way)")
    parser.add_argument("--out", type=Path, default=None, help="append each run as a JSON line to this file")
    args = parser.parse_args()

    cache, prepare_s = fresh_cache(default_cache_dir(), args.convert)
    print(f"`crucible models prepare` into a fresh cache: {prepare_s:.1f}s (load {load_average()})", flush=True)
    runs = []
    try:
        for label in ["cold", *[f"warm{i + 1}" for i in range(args.warm_runs)]]:
            run = asyncio.run(one_start(cache, label, args))
            runs.append(run)
            if args.out is not None:
                with args.out.open("a") as handle:
                    handle.write(json.dumps(run) + "\n")
            print(f"{label}: all five SERVING in {run['all_serving_s']:.1f}s (load {run['load_before']})", flush=True)
    finally:
        shutil.rmtree(cache, ignore_errors=True)

    mode = "plain processes" if args.no_preload else "model services forked from the preloading fork server"
    print(f"\n`crucible up` on {os.cpu_count()} cores, {mode}; seconds from the command to SERVING")
    print(
        format_table(
            ("service", *[r["label"] for r in runs]),
            [(name, *[f"{r['ready'][name]:.1f}" for r in runs]) for name in SERVICES]
            + [("all five", *[f"{r['all_serving_s']:.1f}" for r in runs])],
        )
    )
    print(
        f"\ndetector texts/s ({args.batch} texts of {args.words} words per call, cache skipped), first {args.window:.0f}s vs next"
    )
    print(
        format_table(
            ("start", f"first {args.window:.0f}s", "warm", "first / warm", "load before", "load after"),
            [
                (
                    r["label"],
                    f"{r['first_window_texts_s']:.1f}",
                    f"{r['warm_texts_s']:.1f}",
                    f"{r['first_window_texts_s'] / r['warm_texts_s']:.2f}x",
                    r["load_before"],
                    r["load_after"],
                )
                for r in runs
            ],
        )
    )
    print("\nstart-up phases (wall/CPU seconds; process = seconds from the process's start to SERVING)")
    print(format_table(("start", "process", "wall s", "CPU s", "phases wall/CPU"), _phase_rows(runs)))


if __name__ == "__main__":
    main()

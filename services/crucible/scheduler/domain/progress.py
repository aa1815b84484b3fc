"""Training progress parsed from log lines: nanoGPT lines, 'Epoch x/y' lines and Crucible's JSON-lines protocol.

`ProgressTracker.feed(line, now)` keeps the latest step, totals and metrics and derives an ETA from the recent step rate.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import re

# nanoGPT: "iter 120: loss 2.3456, time 35.12ms, mfu 12.34%" (the mfu part is optional, and may be negative at start).
ITER_RE = re.compile(
    r"\biter (?P<step>\d+): loss (?P<loss>[-+0-9.eEnaif]+), time (?P<ms>[0-9.eE+-]+)ms(?:, mfu (?P<mfu>[-0-9.eE+]+)%)?"
)
# nanoGPT evaluation: "step 250: train loss 1.9876, val loss 2.0123".
EVAL_RE = re.compile(r"\bstep (?P<step>\d+): train loss (?P<train>[-+0-9.eEnaif]+), val loss (?P<val>[-+0-9.eEnaif]+)")
# Keras/tqdm/Lightning style: "Epoch 3/10".
EPOCH_RE = re.compile(r"\bEpoch (?P<epoch>\d+)\s*/\s*(?P<total>\d+)\b")
# Crucible's own protocol: one JSON object per line with a "crucible_progress" object.
PROGRESS_KEY = "crucible_progress"
_INT_KEYS = ("step", "total_steps", "epoch", "total_epochs")
MAX_METRICS = 64


def progress_line(step: int, total_steps: int | None = None, **metrics: float) -> str:
    """The JSON progress line our examples print, e.g. {"crucible_progress": {"step": 10, "total_steps": 100, "loss": 2.1}}."""
    body: dict[str, float | int] = {"step": int(step)}
    if total_steps is not None:
        body["total_steps"] = int(total_steps)
    body.update({k: float(v) for k, v in metrics.items()})
    return json.dumps({PROGRESS_KEY: body}, separators=(",", ":"))


@dataclasses.dataclass
class Progress:
    """The latest progress: what JobProgress carries, in plain Python."""

    step: int | None = None
    total_steps: int | None = None
    epoch: int | None = None
    total_epochs: int | None = None
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    eta_s: float | None = None
    update_time: float | None = None


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


@dataclasses.dataclass
class LineReport:
    """What the last line fed reported by itself (not the running totals): its step, totals and metrics."""

    step: int | None = None
    total_steps: int | None = None
    epoch: int | None = None
    total_epochs: int | None = None
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)


class ProgressTracker:
    """Folds log lines into a Progress; the ETA comes from the step rate over the last `window` step reports.
    `line` holds what the last line fed reported by itself (for the progress history)."""

    def __init__(self, window: int = 20) -> None:
        self.progress = Progress()
        self.line = LineReport()
        self._samples: collections.deque[tuple[float, float]] = collections.deque(maxlen=max(2, window))

    def feed(self, line: str, now: float) -> bool:
        """Parse one line (without its newline); returns True when it carried progress."""
        line = line.strip()
        if not line:
            return False
        self.line = LineReport()
        found = False
        if PROGRESS_KEY in line and line.startswith("{"):
            found = self._json(line)
        if not found and ("iter " in line or "step " in line or "Epoch" in line):  # cheap test before the patterns
            found = self._text(line)
        if found:
            self.progress.update_time = now
            self._update_eta(now)
        return found

    def _set_metric(self, key: str, value: float | None) -> None:
        if value is None:
            return
        if key in self.progress.metrics or len(self.progress.metrics) < MAX_METRICS:
            self.progress.metrics[key] = value
            self.line.metrics[key] = value

    def _set_step(self, step: int) -> None:
        if self.progress.step is not None and step < self.progress.step:
            self._samples.clear()  # a restart from an earlier checkpoint: the old rate no longer applies
        self.progress.step = self.line.step = step

    def _json(self, line: str) -> bool:
        try:
            body = json.loads(line).get(PROGRESS_KEY)
        except (ValueError, AttributeError):
            return False
        if not isinstance(body, dict):
            return False
        p = self.progress
        for key in _INT_KEYS:
            value = body.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
                if key == "step":
                    self._set_step(int(value))
                else:
                    setattr(p, key, int(value))
                    setattr(self.line, key, int(value))
        for key, value in body.items():
            if key in _INT_KEYS or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if isinstance(key, str) and 0 < len(key) <= 64:
                self._set_metric(key, _float(str(value)))
        return True

    def _text(self, line: str) -> bool:
        found = False
        if "iter " in line and (m := ITER_RE.search(line)):
            self._set_step(int(m["step"]))
            self._set_metric("loss", _float(m["loss"]))
            self._set_metric("iter_time_ms", _float(m["ms"]))
            if m["mfu"] is not None:
                self._set_metric("mfu_percent", _float(m["mfu"]))
            found = True
        if "step " in line and (m := EVAL_RE.search(line)):
            self._set_step(int(m["step"]))
            self._set_metric("train_loss", _float(m["train"]))
            self._set_metric("val_loss", _float(m["val"]))
            found = True
        if "Epoch" in line and (m := EPOCH_RE.search(line)):
            epoch, total = int(m["epoch"]), int(m["total"])
            if total > 0 and epoch <= total:
                self.progress.epoch, self.progress.total_epochs = epoch, total
                self.line.epoch, self.line.total_epochs = epoch, total
                found = True
        return found

    def _position(self) -> tuple[float, float] | None:
        """Where the run is and where it ends, in steps (or in epochs when no steps are known)."""
        p = self.progress
        if p.step is not None and p.total_steps:
            return float(p.step), float(p.total_steps)
        if p.epoch is not None and p.total_epochs:
            return float(p.epoch), float(p.total_epochs)
        return None

    def _update_eta(self, now: float) -> None:
        position = self._position()
        if position is None:
            self.progress.eta_s = None
            return
        done, total = position
        if self._samples and self._samples[-1][0] == now:
            self._samples[-1] = (now, done)  # lines read in one batch share a time: keep the latest position
        elif not self._samples or self._samples[-1][1] != done:
            self._samples.append((now, done))
        if done >= total:
            self.progress.eta_s = 0.0
            return
        (t0, s0), (t1, s1) = self._samples[0], self._samples[-1]
        if len(self._samples) < 2 or s1 <= s0 or t1 <= t0:
            self.progress.eta_s = None
            return
        rate = (s1 - s0) / (t1 - t0)
        self.progress.eta_s = (total - done) / rate

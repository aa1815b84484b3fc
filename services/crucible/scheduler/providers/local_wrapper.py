"""Supervisor of one local attempt: runs the command in its own process group, enforces the time limit, records the exit.

Started by the `local` provider in a new session; it outlives a crashed scheduler and leaves `exit.json` for it to read
(exit status and the time the command ended, so billing stops there even when the scheduler was down). The command's
stdout and stderr go through pipes into files that keep at most --log-cap-bytes each; the rest is counted, not kept.
With --uid/--gid (the wrapper runs as root) the command runs as that user with no supplementary groups.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import BinaryIO, cast


def _write_json(path: str, payload: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _stop_group(child: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the child's process group, then SIGKILL it after `grace_s` seconds."""
    try:
        os.killpg(child.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        child.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(child.pid, signal.SIGKILL)  # also reaps grandchildren left in the group
    except ProcessLookupError:
        pass


class _Pump(threading.Thread):
    """Copies one pipe into one file, keeping at most `cap` bytes (0: all) and counting the bytes dropped after."""

    def __init__(self, pipe: io.BufferedReader, out: BinaryIO, cap: int) -> None:
        super().__init__(daemon=True)
        self.pipe, self.out, self.cap = pipe, out, cap
        self.kept = self.dropped = 0

    def run(self) -> None:
        while block := self.pipe.read1(1 << 16):
            room = len(block) if not self.cap else max(0, self.cap - self.kept)
            if room:
                self.out.write(block[:room])
                self.out.flush()
                self.kept += min(room, len(block))
            self.dropped += len(block) - min(room, len(block))


def main(argv: list[str] | None = None) -> int:
    """Run the command given after `--`; returns 0 (the command's own status is in exit.json)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--attempt-dir", required=True)
    parser.add_argument("--cwd", required=True)
    parser.add_argument("--max-duration-s", type=float, default=0.0)
    parser.add_argument("--grace-s", type=float, default=10.0)
    parser.add_argument("--log-cap-bytes", type=int, default=0, help="bytes kept per stream; 0 keeps everything")
    parser.add_argument("--uid", type=int, default=-1, help="run the command as this user (the wrapper runs as root)")
    parser.add_argument("--gid", type=int, default=-1)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    exit_path = os.path.join(args.attempt_dir, "exit.json")
    stop = {"signal": 0}

    def on_term(signum: int, _frame: object) -> None:
        stop["signal"] = signum

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    started = time.time()
    with open(os.path.join(args.attempt_dir, "stdout"), "ab") as out, open(os.path.join(args.attempt_dir, "stderr"), "ab") as err:
        drop = {"user": args.uid, "group": args.gid, "extra_groups": []} if args.uid >= 0 else {}
        try:
            child = subprocess.Popen(
                command,
                cwd=args.cwd,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                process_group=0,
                **drop,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            err.write(f"crucible: cannot start {command[0]!r}: {exc}\n".encode())
            _write_json(
                exit_path,
                {"exit_code": 127, "cancelled": False, "timed_out": False, "start_error": str(exc), "end_time": time.time()},
            )
            return 0
        _write_json(os.path.join(args.attempt_dir, "child.json"), {"pid": child.pid, "pgid": child.pid, "start_time": started})
        # stdout/stderr=PIPE with the default buffering: both are io.BufferedReader (subprocess's stub says IO[Any] | None)
        child_out, child_err = cast(io.BufferedReader, child.stdout), cast(io.BufferedReader, child.stderr)
        pumps = [_Pump(child_out, out, args.log_cap_bytes), _Pump(child_err, err, args.log_cap_bytes)]
        for pump in pumps:
            pump.start()
        timed_out = False
        while True:
            try:
                child.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                pass
            if stop["signal"]:
                _stop_group(child, args.grace_s)
                break
            if args.max_duration_s > 0 and time.time() - started > args.max_duration_s:
                timed_out = True
                err.write(f"\ncrucible: time limit of {args.max_duration_s:.0f}s reached; stopping\n".encode())
                err.flush()
                _stop_group(child, args.grace_s)
                break
        code = child.wait()
        ended = time.time()
        for pump in pumps:  # the pipes end when the last process holding them exits
            pump.join(timeout=args.grace_s)
        if any(p.is_alive() for p in pumps):  # a background process of the job still holds the pipes: end it
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            for pump in pumps:
                pump.join(timeout=5.0)
    _write_json(
        exit_path,
        {
            "exit_code": code,
            "cancelled": bool(stop["signal"]),
            "timed_out": timed_out,
            "end_time": ended,
            "log_bytes_dropped": {"stdout": pumps[0].dropped, "stderr": pumps[1].dropped},
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

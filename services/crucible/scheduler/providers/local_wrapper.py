"""Supervisor of one local attempt: runs the command in its own process group, enforces the time limit, records the exit.

Started by the `local` provider in a new session; it outlives a crashed scheduler and leaves `exit.json` for it to read
(exit status and the time the command ended, so billing stops there even when the scheduler was down). The command's
stdout and stderr go through pipes into files that keep at most --log-cap-bytes each; the rest is counted, not kept.
With --sandboxed the command is a bubblewrap argv (providers/sandbox.py): the wrapper stays outside the sandbox, so
its files are not the job's to change, and stopping the job means stopping its PID namespace, every process in it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import select
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


def _namespace_members(init_pid: int) -> list[int]:
    """Processes (host pids) of the PID namespace whose first process is `init_pid`, that one left out."""
    try:
        ns = os.readlink(f"/proc/{init_pid}/ns/pid")
    except OSError:
        return []
    members = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != init_pid:
            try:
                if os.readlink(f"/proc/{name}/ns/pid") == ns:
                    members.append(int(name))
            except OSError:
                pass
    return members


def _stop_sandbox(child: subprocess.Popen, init_pid: int, grace_s: float) -> None:
    """SIGTERM every process of the job's PID namespace (setsid or double-forked ones too), then after `grace_s`
    SIGKILL its first process: the kernel then kills everything left in the namespace."""
    for pid in _namespace_members(init_pid):
        try:
            os.kill(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        child.wait(timeout=grace_s)
        return  # bubblewrap ended, so did its namespace (and `init_pid` may name another process by now)
    except subprocess.TimeoutExpired:
        pass
    for pid in (init_pid, child.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _sandbox_init_pid(fd: int, timeout_s: float = 30.0) -> int:
    """The host pid of the sandbox's first process, from bubblewrap's --info-fd JSON (0 when it never came)."""
    data = b""
    try:
        while select.select([fd], [], [], timeout_s)[0]:
            block = os.read(fd, 4096)
            if not block:
                break
            data += block
    finally:
        os.close(fd)
    try:
        return int(json.loads(data or b"{}").get("child-pid", 0))
    except (ValueError, AttributeError):
        return 0


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
    parser.add_argument("--sandboxed", action="store_true", help="the command is a bwrap argv (its --info-fd is added)")
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
        info_read, info_write = os.pipe() if args.sandboxed else (-1, -1)
        if args.sandboxed:
            command = [command[0], "--info-fd", str(info_write), *command[1:]]
        try:
            child = subprocess.Popen(
                command,
                cwd=args.cwd,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                process_group=0,
                pass_fds=(info_write,) if args.sandboxed else (),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            if args.sandboxed:
                os.close(info_read)
                os.close(info_write)
            err.write(f"crucible: cannot start {command[0]!r}: {exc}\n".encode())
            _write_json(
                exit_path,
                {"exit_code": 127, "cancelled": False, "timed_out": False, "start_error": str(exc), "end_time": time.time()},
            )
            return 0
        init_pid = 0
        if args.sandboxed:
            os.close(info_write)
            init_pid = _sandbox_init_pid(info_read)

        def end_job() -> None:
            if init_pid:
                _stop_sandbox(child, init_pid, args.grace_s)
            else:
                _stop_group(child, args.grace_s)

        _write_json(
            os.path.join(args.attempt_dir, "child.json"),
            {"pid": child.pid, "pgid": child.pid, "sandbox_pid": init_pid, "start_time": started},
        )
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
                end_job()
                break
            if args.max_duration_s > 0 and time.time() - started > args.max_duration_s:
                timed_out = True
                err.write(f"\ncrucible: time limit of {args.max_duration_s:.0f}s reached; stopping\n".encode())
                err.flush()
                end_job()
                break
        code = child.wait()
        ended = time.time()
        if args.sandboxed and 128 < code < 128 + 65:
            code = 128 - code  # bubblewrap reports a command killed by signal N as 128+N, as a shell does

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

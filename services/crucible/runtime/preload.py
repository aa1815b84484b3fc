"""A fork server for the model services: imports torch and transformers once, then forks each model service from it.

Importing them costs ~10 CPU-seconds per process; three model services importing at once on a small CPU was most
of `crucible up`'s start-up. `python -m crucible.runtime.preload` speaks one JSON object per line on stdin/stdout.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import IO, Any

#: What the fork server imports before forking: the libraries every model service needs, and the architectures of
#: the packaged models (SmolLM2 and Gemma-3 are causal LMs, MiniLM a BERT). No gRPC: its core must start after fork.
PRELOAD_MODULES = (
    "torch",
    "transformers",
    "transformers.modeling_utils",
    "transformers.core_model_loading",
    "transformers.models.auto.modeling_auto",
    "transformers.models.auto.tokenization_auto",
    "transformers.models.llama.modeling_llama",
    "transformers.models.bert.modeling_bert",
    "safetensors.torch",
    "tokenizers",
)


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def preload(modules: Sequence[str] = PRELOAD_MODULES) -> dict[str, Any]:
    """Import `modules` (a missing optional one is skipped); returns what was loaded and how long it took."""
    import importlib

    started, cpu = time.perf_counter(), time.process_time()
    loaded, skipped = [], []
    for name in modules:
        try:
            importlib.import_module(name)
            loaded.append(name)
        except Exception as err:  # an architecture this transformers lacks: its services import it themselves
            skipped.append(f"{name}: {type(err).__name__}")
    return {
        "loaded": loaded,
        "skipped": skipped,
        "wall_s": round(time.perf_counter() - started, 2),
        "cpu_s": round(time.process_time() - cpu, 2),
        "threads": _thread_count(),
    }


def _set_parent_death_signal() -> None:
    if sys.platform != "linux":
        return
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _child(argv: Sequence[str], env: Mapping[str, str], log: str | None) -> None:
    """In the forked child: become a session leader, take the request's environment and log file, run the command."""
    code = 1
    try:
        os.setsid()
        _set_parent_death_signal()
        os.environ.clear()
        os.environ.update(env)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        if log is not None:
            out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(out, 1)
            os.dup2(out, 2)
            os.close(out)
        else:  # fd 1 is the fork server's reply pipe: the service's output goes where the server's stderr goes
            os.dup2(2, 1)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115 - fd 0 stays open for the process's life
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.argv = ["crucible", *argv]
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        # Run the service as `python -m crucible ARGV` would (the package's __main__), by name: this module is
        # imported by the launcher that the CLI itself imports, so naming the CLI here would be an import cycle.
        import runpy

        runpy.run_module("crucible", run_name="__main__", alter_sys=False)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


class _Server:
    """The fork server's loop: fork on each request, report every child's pid and exit code on stdout."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.lock = threading.Lock()
        self.children: set[int] = set()

    def send(self, message: Mapping[str, Any]) -> None:
        with self.lock:
            self.out.write(json.dumps(message) + "\n")
            self.out.flush()

    def reap(self) -> None:
        """Report children as they exit (a thread); returns once the request stream closed and every child exited."""
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                if self.closed.is_set():
                    return
                time.sleep(0.05)
                continue
            with self.lock:
                self.children.discard(pid)
            self.send({"exit": pid, "code": os.waitstatus_to_exitcode(status)})

    def serve(self, requests: IO[str]) -> None:
        self.closed = threading.Event()
        reaper = threading.Thread(target=self.reap, name="preload-reaper", daemon=True)
        started = False
        for line in requests:
            request = json.loads(line)
            with self.lock:
                pid = os.fork()
                if pid == 0:
                    _child(request["argv"], request["env"], request.get("log"))
                self.children.add(pid)
            self.send({"id": request["id"], "pid": pid})
            if not started:  # after the first fork: a thread in the server never leaks into a child's start
                reaper.start()
                started = True
        # The launcher closed the stream (it stopped, or died): stop what is left, then exit.
        self.closed.set()
        with self.lock:
            left = list(self.children)
        for pid in left:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if started:
            reaper.join(60)


def main() -> int:
    _set_parent_death_signal()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))  # the children get SIGTERM from their death signal
    out = sys.stdout
    sys.stdout = sys.stderr  # whatever a library prints must not corrupt the protocol
    # CRUCIBLE_PRELOAD_MODULES (comma-separated) replaces the list, e.g. to add a model's architecture module
    chosen = os.environ.get("CRUCIBLE_PRELOAD_MODULES")
    report = preload([m for m in chosen.split(",") if m] if chosen is not None else PRELOAD_MODULES)
    # torch starts a native helper thread at import (forking after it is what its DataLoader workers do); a Python
    # thread running now could hold a lock the children would inherit: refuse, the launcher then starts them plainly.
    if threading.active_count() > 1:
        out.write(json.dumps({"error": f"{threading.active_count()} Python threads after preloading", **report}) + "\n")
        out.flush()
        return 1
    print(json.dumps({"msg": "fork server ready", **report}), file=sys.stderr, flush=True)  # its log: preload.log
    out.write(json.dumps({"ready": True, **report}) + "\n")
    out.flush()
    _Server(out).serve(sys.stdin)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


# ---------------------------------------------------------------------------------------------------------------
# The launcher's side


def _popen_parent_death() -> None:
    """preexec_fn: SIGTERM this child when the launcher dies (even by SIGKILL)."""
    _set_parent_death_signal()


class ForkedProcess:
    """A service forked by the fork server, with the part of `subprocess.Popen`'s interface the launcher uses.

    Until the fork server is ready the process is pending; if the server fails, it is started with Popen instead.
    """

    def __init__(self, server: ForkServer, request_id: int, argv: Sequence[str], env: Mapping[str, str], log: str | None):
        self._server = server
        self.request_id = request_id
        self.argv = list(argv)
        self.env = dict(env)
        self.log = log
        self._pid: int | None = None
        self.returncode: int | None = None
        self.popen: Any = None  # a subprocess.Popen when the fork server could not be used
        self.cancelled = False

    @property
    def pid(self) -> int:
        """The service's process id (waits for the fork, at most a minute)."""
        with self._server.cond:
            self._server.cond.wait_for(lambda: self._pid is not None or self.popen is not None or self.returncode is not None, 60)
        if self.popen is not None:
            return int(self.popen.pid)
        return self._pid if self._pid is not None else -1

    def _forked(self, pid: int) -> None:  # under the server's lock
        self._pid = pid
        if self.cancelled:
            self._signal(signal.SIGTERM)

    def _fallback(self) -> None:  # under the server's lock: the fork server failed before forking this one
        import subprocess

        if self.cancelled:
            self.returncode = -signal.SIGTERM
            return
        out = open(self.log, "ab") if self.log is not None else None  # noqa: SIM115 - the child holds it
        try:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "crucible", *self.argv],
                env=self.env,
                stdout=out,
                stderr=out,
                start_new_session=True,
                preexec_fn=_popen_parent_death,
            )
        finally:
            if out is not None:
                out.close()

    def _signal(self, sig: int) -> None:
        if self._pid is None:
            return
        try:
            os.kill(self._pid, sig)
        except ProcessLookupError:
            pass

    def poll(self) -> int | None:
        """The exit code once the process ended (negative: killed by that signal), else None."""
        with self._server.cond:
            if self.popen is not None:
                self.returncode = self.popen.poll()
            elif self.returncode is None and self._pid is not None and self._server.closed:
                try:  # the fork server is gone, so no exit report will come: look at the process itself
                    os.kill(self._pid, 0)
                except ProcessLookupError:
                    self.returncode = -1
            return self.returncode

    def send_signal(self, sig: int) -> None:
        with self._server.cond:
            if self.popen is not None:
                self.popen.send_signal(sig)
            elif self._pid is None:
                self.cancelled = True  # signalled as soon as it is forked (or never started)
            else:
                self._signal(sig)

    def kill(self) -> None:
        """SIGKILL the process and its session."""
        with self._server.cond:
            if self.popen is not None:
                target = self.popen.pid
            elif self._pid is not None:
                target = self._pid
            else:
                self.cancelled = True
                self.returncode = -signal.SIGKILL
                return
        try:
            os.killpg(target, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the exit code; `subprocess.TimeoutExpired` after `timeout` seconds."""
        import subprocess

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            code = self.poll()
            if code is not None:
                return code
            if self.popen is not None:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                return int(self.popen.wait(left))
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.argv, timeout or 0.0)
            with self._server.cond:
                self._server.cond.wait(0.1)


class ForkServer:
    """Starts `python -m crucible.runtime.preload` and forks services from it once it has imported the libraries."""

    def __init__(self, env: Mapping[str, str], stderr: IO[bytes] | None = None) -> None:
        import subprocess

        self.cond = threading.Condition()
        self.closed = False
        self.ready: dict[str, Any] | None = None
        self.failure = ""
        self._next_id = 0
        self._pending: dict[int, ForkedProcess] = {}
        self._by_pid: dict[int, ForkedProcess] = {}
        self._exits: dict[int, int] = {}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "crucible.runtime.preload"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=dict(env),
            start_new_session=True,
            preexec_fn=_popen_parent_death,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, name="fork-server-reader", daemon=True)
        self._reader.start()

    def spawn(self, argv: Sequence[str], env: Mapping[str, str], log: str | None = None) -> ForkedProcess:
        """Ask for `crucible ARGV` to be forked with `env`, its output appended to `log` (else the server's stderr)."""
        with self.cond:
            self._next_id += 1
            handle = ForkedProcess(self, self._next_id, argv, env, log)
            if self.closed:
                handle._fallback()
                return handle
            self._pending[handle.request_id] = handle
            request = {"id": handle.request_id, "argv": list(argv), "env": dict(env), "log": log}
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps(request) + "\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError) as err:
                self._fail(f"cannot reach the fork server: {err}")
        return handle

    def _fail(self, why: str) -> None:  # under the lock
        self.closed = True
        self.failure = self.failure or why
        for handle in self._pending.values():
            handle._fallback()
        self._pending.clear()
        self.cond.notify_all()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            with self.cond:
                if "ready" in message:
                    self.ready = message
                elif "error" in message:
                    self._fail(str(message["error"]))
                elif "pid" in message:
                    handle = self._pending.pop(int(message["id"]), None)
                    if handle is not None:
                        pid = int(message["pid"])
                        self._by_pid[pid] = handle
                        handle._forked(pid)
                        if pid in self._exits:
                            handle.returncode = self._exits.pop(pid)
                elif "exit" in message:
                    pid, code = int(message["exit"]), int(message["code"])
                    if pid in self._by_pid:
                        self._by_pid[pid].returncode = code
                    else:
                        self._exits[pid] = code  # reported before its fork reply was read
                self.cond.notify_all()
        with self.cond:
            self._fail("the fork server exited" if self.ready is None else "the fork server stopped")

    def close(self, timeout: float = 30.0) -> None:
        """Close the request stream (the server SIGTERMs any child left and exits); kill it after `timeout`."""
        import subprocess

        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)

"""Issue 22, classes 3-5: local jobs run in a bubblewrap sandbox. Escaped children (setsid, double fork, nohup) end
with the job; two jobs cannot reach each other, the scheduler's files or anything outside their work folder; a venv
under a 0700 home runs without root; without bwrap local jobs are refused unless --unsafe-local-jobs.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from crucible.api.scheduler.v1 import job_pb2
from crucible.api.scheduler.v1 import scheduler_service_pb2 as pb
from crucible.api.scheduler.v1 import scheduler_service_pb2_grpc as pb_grpc
from tests.scheduler.service.test_scheduler import final, local_spec, start_scheduler

S = job_pb2.JobState
ROOT = os.geteuid() == 0
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed: make tools")


def _processes_with(marker: str) -> list[int]:
    """Host pids whose command line contains `marker`."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{name}/cmdline").read_bytes():
                    found.append(int(name))
            except OSError:
                pass
    return found


def _processes_of(uid: int) -> list[int]:
    """Host pids owned by `uid`."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    found.append(int(name))
            except OSError:
                pass
    return found


async def _logs(stub, job_id: str) -> str:
    return "".join([c.text async for c in stub.StreamJobLogs(pb.StreamJobLogsRequest(job_id=job_id))])


async def _wait_for_line(stub, job_id: str, line: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = await _logs(stub, job_id)
        if line in text:
            return text
        await asyncio.sleep(0.2)
    raise AssertionError(f"{line!r} never appeared in the log of {job_id}:\n{await _logs(stub, job_id)}")


@pytest.fixture
async def scheduler(tmp_path):
    server, port = await start_scheduler(str(tmp_path / "state"), code_roots=(str(tmp_path),))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield pb_grpc.SchedulerServiceStub(channel), tmp_path
    await channel.close()
    await server.stop(0)


# --- class 4: job processes end with the job ---------------------------------------------------------------------

# Starts children that leave the job's process group and session, then ends as the case says.
ESCAPER = textwrap.dedent("""\
    M="$1"
    setsid sleep "$M.1" >/dev/null 2>&1 < /dev/null &
    ( sleep "$M.2" >/dev/null 2>&1 < /dev/null & ) &
    nohup sleep "$M.3" >/dev/null 2>&1 < /dev/null &
    sh -c 'setsid sh -c "sleep $0.4 >/dev/null 2>&1 < /dev/null &"' "$M"
    sleep 1
    echo "uid $(id -u)"
    echo started
    [ "$2" = exit ] && exit 0
    exec sleep 600
""")


@needs_bwrap
@pytest.mark.parametrize("ending", ["succeeded", "cancelled", "time limit"])
async def test_escaped_children_end_with_the_job(scheduler, ending: str) -> None:
    stub, _ = scheduler
    marker = f"7{uuid.uuid4().int % 10**6:06d}"  # sleep's argument: a number only this test uses
    spec = local_spec(
        ["/bin/sh", "-c", ESCAPER, "sh", marker, "exit" if ending == "succeeded" else "stay"],
        max_duration=Duration(seconds=4 if ending == "time limit" else 120),
    )
    job = (await stub.CreateJob(pb.CreateJobRequest(spec=spec))).job
    try:
        text = await _wait_for_line(stub, job.job_id, "started")
        uid = int(text.split("uid ", 1)[1].split()[0])
        if ending == "cancelled":
            await stub.CancelJob(pb.CancelJobRequest(job_id=job.job_id))
        done = await final(stub, job.job_id)
        expected = {"succeeded": S.JOB_STATE_SUCCEEDED, "cancelled": S.JOB_STATE_CANCELLED, "time limit": S.JOB_STATE_FAILED}
        assert done.state == expected[ending], done.transitions[-1].reason
        await asyncio.sleep(0.5)
        assert _processes_with(marker) == [], f"processes of the {ending} job outlived it"
        if ROOT:
            assert uid >= 200000 and _processes_of(uid) == [], f"uid {uid} still runs processes"
        assert done.end_time.seconds and done.end_time.seconds <= time.time()  # billing stopped
    finally:
        for pid in _processes_with(marker):  # never leave them behind, whatever the outcome
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass


# --- class 3: jobs cannot reach each other, the scheduler or anything outside their folder ------------------------

HOLDER = "import time; open('mine.txt', 'w').write('secret of A'); print('ready', flush=True); time.sleep(120)"
PROBE = textwrap.dedent("""\
    import glob, os, sys
    other_work, state, store, secrets, marker = sys.argv[1:6]
    said = []
    def probe(what, fn):
        try:
            fn()
            said.append(f"{what}: REACHED")
        except OSError as exc:
            said.append(f"{what}: refused ({type(exc).__name__})")
    probe("other work", lambda: open(os.path.join(other_work, "mine.txt")).read())
    probe("other write", lambda: open(os.path.join(other_work, "planted"), "w").write("x"))
    probe("state", lambda: os.listdir(state))
    probe("database", lambda: open(os.path.join(state, "scheduler.db"), "rb").read(1))
    probe("store", lambda: os.listdir(store))
    probe("secrets", lambda: open(secrets).read())
    probe("etc write", lambda: open("/etc/crucible-probe-" + marker, "w").write("x"))
    probe("usr write", lambda: open("/usr/crucible-probe-" + marker, "w").write("x"))
    probe("python write", lambda: open(os.path.join(sys.prefix, "crucible-probe-" + marker), "w").write("x"))
    probe("own attempt", lambda: open(os.path.join(os.getcwd(), "..", "attempts", "1", "exit.json"), "w").write("{}"))
    probe("own work", lambda: open("out.txt", "w").write("mine"))
    probe("tmp", lambda: open("/tmp/scratch-" + marker, "w").write("private"))
    mine = ("/proc/%d/" % os.getpid(), "/proc/self/", "/proc/1/")  # itself and its sandbox's init (its own argv)
    environ = [p for p in glob.glob("/proc/[0-9]*/environ") if not p.startswith(mine)]
    seen = []
    for path in environ:
        try:
            seen.append(open(path, "rb").read())
        except OSError:
            pass
    said.append("other job id seen: " + str(any(os.environ["OTHER_JOB"].encode() in e for e in seen)))
    cmdlines = []
    for path in glob.glob("/proc/[0-9]*/cmdline"):
        if path.startswith(mine):
            continue
        try:
            cmdlines.append(open(path, "rb").read())
        except OSError:
            pass
    said.append("other process seen: " + str(any(marker.encode() in c for c in cmdlines)))
    said.append("processes: " + str(len(cmdlines)))
    print("\\n".join(said))
""")


@needs_bwrap
async def test_two_jobs_cannot_reach_each_other_or_the_scheduler(scheduler, monkeypatch) -> None:
    stub, tmp = scheduler
    state = tmp / "state"
    secrets = tmp / "secrets.json"
    secrets.write_text(json.dumps({"lambda": {"api_key": "probe-key-31415"}}))
    secrets.chmod(0o600)
    marker = f"sleepy-{uuid.uuid4().hex[:8]}"
    holder = (await stub.CreateJob(pb.CreateJobRequest(spec=local_spec([sys.executable, "-c", HOLDER, marker])))).job
    try:
        await _wait_for_line(stub, holder.job_id, "ready")
        other_work = state / "jobs" / holder.job_id / "work"
        assert (other_work / "mine.txt").read_text() == "secret of A"
        argv = [sys.executable, "-c", PROBE, str(other_work), str(state), str(state / "store"), str(secrets), marker]
        prober = (await stub.CreateJob(pb.CreateJobRequest(spec=local_spec(argv, env={"OTHER_JOB": holder.job_id})))).job
        done = await final(stub, prober.job_id)
        text = await _logs(stub, prober.job_id)
        tmp_shared = Path(f"/tmp/scratch-{marker}").exists()  # (checked before the clean-up below)
        assert done.state == S.JOB_STATE_SUCCEEDED, text
    finally:
        await stub.CancelJob(pb.CancelJobRequest(job_id=holder.job_id))
        for left in (f"/etc/crucible-probe-{marker}", f"/usr/crucible-probe-{marker}", f"/tmp/scratch-{marker}"):
            Path(left).unlink(missing_ok=True)  # written only where the job was not contained
        Path(sys.prefix, f"crucible-probe-{marker}").unlink(missing_ok=True)
    for what in ("other work", "other write", "state", "database", "store", "secrets"):
        assert f"{what}: refused" in text, text
    for what in ("etc write", "usr write", "python write", "own attempt"):
        assert f"{what}: refused" in text, text  # nothing outside its work folder is writable
    assert "own work: REACHED" in text and "tmp: REACHED" in text, text
    assert "other job id seen: False" in text and "other process seen: False" in text, text
    assert int(text.split("processes: ", 1)[1].split()[0]) <= 2, text  # its own PID namespace: bwrap's init (and sh)
    assert not (other_work / "planted").exists()
    assert not tmp_shared  # its /tmp was its own
    attempt = state / "jobs" / prober.job_id / "attempts" / "1" / "exit.json"
    assert json.loads(attempt.read_text())["exit_code"] == 0


# --- class 5: the standard install's venv under a 0700 home runs sandboxed, not as root ---------------------------


@needs_bwrap
@pytest.mark.skipif(not ROOT, reason="a 0700 home of another user needs root to set up")
async def test_venv_under_a_private_home_runs_sandboxed(tmp_path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    venv = home / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    home.chmod(0o700)
    server, port = await start_scheduler(str(tmp_path / "state"), local_python=str(venv / "bin" / "python"))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.SchedulerServiceStub(channel)
            code = "import os, sys; print(sys.prefix, os.getuid(), os.environ['VIRTUAL_ENV'])"
            job = (await stub.CreateJob(pb.CreateJobRequest(spec=local_spec(["python", "-c", code])))).job
            done = await final(stub, job.job_id)
            text = await _logs(stub, job.job_id)
    finally:
        await server.stop(0)
    assert done.state == S.JOB_STATE_SUCCEEDED, text + done.transitions[-1].reason
    prefix, uid, virtual_env = text.split()
    assert prefix == virtual_env == str(venv)  # `python` on the job's PATH is the chosen environment's
    assert int(uid) >= 200000  # a job uid of the range, never root


@needs_bwrap
async def test_bare_python_is_the_schedulers_environment(scheduler, monkeypatch) -> None:
    """Issue 26: `python train.py` finds the scheduler's venv (torch included) though the venv was never activated."""
    stub, _ = scheduler
    venv_bin = os.path.dirname(sys.executable)
    monkeypatch.setenv("PATH", os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != venv_bin))
    code = "import sys, torch; print(sys.prefix)"
    job = (await stub.CreateJob(pb.CreateJobRequest(spec=local_spec(["python", "-c", code])))).job
    done = await final(stub, job.job_id)
    text = await _logs(stub, job.job_id)
    assert done.state == S.JOB_STATE_SUCCEEDED, text + done.transitions[-1].reason
    assert text.strip() == sys.prefix


# --- the refusal without a sandbox, and the explicit unsafe choice ------------------------------------------------


async def test_without_bwrap_local_jobs_are_refused_unless_unsafe(tmp_path, monkeypatch) -> None:
    bare = tmp_path / "bin"
    bare.mkdir()
    monkeypatch.setenv("PATH", str(bare))  # no bwrap to be found
    server, port = await start_scheduler(str(tmp_path / "state"))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.SchedulerServiceStub(channel)
            listed = {p.name: p for p in (await stub.ListProviders(pb.ListProvidersRequest())).providers}
            reason = listed["local"].unavailable_reason
            assert "bwrap" in reason and "--unsafe-local-jobs" in reason, reason
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.CreateJob(pb.CreateJobRequest(spec=local_spec([sys.executable, "-c", "print('ran')"])))
            assert err.value.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT)
    finally:
        await server.stop(0)
    server, port = await start_scheduler(str(tmp_path / "state2"), unsafe_local_jobs=True)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.SchedulerServiceStub(channel)
            listed = {p.name: p for p in (await stub.ListProviders(pb.ListProvidersRequest())).providers}
            assert listed["local"].unavailable_reason == "" and "unsandboxed" in listed["local"].credentials_hint
            job = (
                await stub.CreateJob(
                    pb.CreateJobRequest(spec=local_spec([sys.executable, "-c", "import os; print(os.getuid())"]))
                )
            ).job
            done = await final(stub, job.job_id)
            assert done.state == S.JOB_STATE_SUCCEEDED
            assert (await _logs(stub, job.job_id)).strip() == str(os.geteuid())  # the scheduler's own user, as chosen
    finally:
        await server.stop(0)


# --- a non-root scheduler: bwrap through an unprivileged user namespace, or a clear reason -----------------------

NON_ROOT = textwrap.dedent("""\
    import importlib.util, sys, tempfile
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("sandbox", sys.argv[1])
    sandbox = sys.modules["sandbox"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sandbox)
    try:
        box = sandbox.build_sandbox(sys.executable, uid_range=(200000, 265535))
    except sandbox.SandboxError as exc:
        print("REFUSED", exc)
        sys.exit(0)
    with tempfile.TemporaryDirectory() as folder:
        import subprocess
        argv = box.command(["/bin/sh", "-c", "id -u; ls /proc | grep -c '^[0-9]'"], uid=200123, cwd=Path(folder))
        print("RAN", subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout.split())
""")


@needs_bwrap
@pytest.mark.skipif(not ROOT or shutil.which("setpriv") is None, reason="switching to nobody needs root and setpriv")
def test_non_root_scheduler_gets_a_sandbox_or_the_reason() -> None:
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 that nobody can run")
    module = importlib.util.find_spec("crucible.scheduler.providers.sandbox")
    assert module is not None and module.origin
    folder = Path(tempfile.mkdtemp(prefix="crucible-nonroot-", dir="/tmp"))  # pytest's tmp_path is root-only (0700)
    try:
        folder.chmod(0o755)
        copy = folder / "sandbox.py"
        shutil.copy(module.origin, copy)
        copy.chmod(0o644)
        out = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, "-c", NON_ROOT, str(copy)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd="/",
            env={"PATH": "/usr/bin:/bin"},
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    said = out.stdout.strip()
    assert out.returncode == 0, out.stderr
    if said.startswith("REFUSED"):  # no unprivileged user namespaces here: the reason names what failed
        assert "self-test" in said or "bwrap" in said, said
    else:
        uid, count = said.removeprefix("RAN ").strip("[]").replace("'", "").split(", ")
        assert uid == "200123" and int(count) <= 4, said  # its uid; its own PID namespace (init, sh, ls, grep)


# --- the settings' rules ------------------------------------------------------------------------------------------


def test_uid_range_and_store_folder_rules(tmp_path) -> None:
    from crucible.runtime.errors import ConfigError
    from crucible.scheduler.providers.sandbox import file_url_folder, parse_uid_range

    assert parse_uid_range("200000-265535") == (200000, 265535)
    for bad in ("0-100", "200000", "x-y", "300000-200000"):
        with pytest.raises(ValueError, match="job_uid_range"):
            parse_uid_range(bad)
    with pytest.raises(ConfigError, match="job_uid_range"):
        from crucible.runtime.config import load_config
        from crucible.scheduler.config import SchedulerConfig

        load_config(SchedulerConfig, "scheduler", env={}, state_dir=str(tmp_path), job_uid_range="0-10")
    job = "/store/jobs/job-1"
    assert file_url_folder("file:///store/jobs/job-1/checkpoints", [job]) == Path("/store/jobs/job-1/checkpoints")
    for outside in ("file:///store/jobs/job-2/checkpoints", "file:///store/jobs/job-1/../job-2/x", f"file://{job}", "s3://b/x"):
        assert file_url_folder(outside, [job]) is None, outside  # only a folder inside the job's own prefix is shown

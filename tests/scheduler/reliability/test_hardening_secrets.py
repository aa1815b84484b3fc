"""Issue 12, class 6: a local job cannot read the scheduler's provider keys, from its /proc environ or its secrets file.

The scheduler runs as a `crucible serve` child with keys in its environment and a 0600 secrets file. Local jobs run in
the bubblewrap sandbox (issue 22) as a uid of --job-uid-range: neither the scheduler's /proc entry nor the secrets
file is in their view. As another user the scheduler's non-dumpable flag also keeps /proc/<pid>/environ closed.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import grpc

from crucible.api.scheduler.v1 import job_pb2
from crucible.api.scheduler.v1 import scheduler_service_pb2 as pb
from crucible.api.scheduler.v1 import scheduler_service_pb2_grpc as pb_grpc
from crucible.clients.health import wait_serving
from tests.conftest import free_port_block
from tests.reliability.support import ServiceProcess, child_env, serve_command

KEYS = {
    "LAMBDA_API_KEY": "lam-key-61f0aa93c2",
    "RUNPOD_API_KEY": "rpd-key-0c7e55d1ab",
    "MODAL_TOKEN_SECRET": "as-modal-9e8d7c6b5a",
}
FILE_KEY = "pps-file-key-4d3c2b1a00"
# What the job tries: its uid, the scheduler's initial environment, the secrets file, its own environment.
PROBE = 'id -u; echo "--environ"; cat /proc/$1/environ; echo "--file"; cat "$2"; echo "--env"; env'


async def test_local_job_cannot_read_the_schedulers_keys() -> None:
    work = Path(tempfile.mkdtemp(prefix="crucible-secrets-"))
    try:
        secrets = work / "secrets.json"
        secrets.write_text(json.dumps({"paperspace": {"api_key": FILE_KEY}}))
        secrets.chmod(0o600)
        port = free_port_block(1)
        argv = serve_command(
            "scheduler",
            port,
            "--state-dir",
            str(work / "state"),
            "--providers",
            "local",
            "--poll-interval-s",
            "0.1",
            "--metrics-enabled",
            "false",
        )
        sched = ServiceProcess(argv, work / "scheduler.log", child_env(**KEYS, CRUCIBLE_SECRETS_FILE=str(secrets)))
        try:
            await wait_serving(f"127.0.0.1:{port}", timeout=90)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.SchedulerServiceStub(channel)
                spec = job_pb2.JobSpec(
                    command=["/bin/sh", "-c", PROBE, "sh", str(sched.pid), str(secrets)],
                    provider_policy=job_pb2.PROVIDER_POLICY_EXPLICIT,
                    providers=["local"],
                )
                job = (await stub.CreateJob(pb.CreateJobRequest(spec=spec), timeout=30)).job
                async for reply in stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id), timeout=60):
                    job = reply.job
                text = "".join([c.text async for c in stub.StreamJobLogs(pb.StreamJobLogsRequest(job_id=job.job_id), timeout=30)])
        finally:
            sched.stop()
        assert "--env" in text and "PATH=" in text, text  # the probe ran to its end
        for value in (*KEYS.values(), FILE_KEY):
            assert value not in text, f"the job read {value!r}:\n{text}"
        environ_part = text.split("--environ", 1)[1].split("--file", 1)[0]
        assert "PATH=" not in environ_part, text
        file_part = text.split("--file", 1)[1].split("--env", 1)[0]
        assert "paperspace" not in file_part, text
        # Not in its view at all (stderr follows stdout in the log): neither the scheduler's pid nor the file exist.
        assert f"/proc/{sched.pid}/environ: No such file" in text and f"{secrets}: No such file" in text, text
        assert int(text.split()[0]) >= 200000, text  # a job uid of the range, never the scheduler's
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


def test_protect_process_hides_the_environment_from_same_user_processes() -> None:
    """What holds for a job under the scheduler's own non-root user: the process is not dumpable (its /proc environ
    and memory then need root) and the keys have left os.environ, so no child inherits them."""
    import subprocess
    import sys

    code = (
        "import ctypes, os\n"
        "from crucible.scheduler.providers.credentials import protect_process, PR_GET_DUMPABLE\n"
        "moved = protect_process()\n"
        "print(ctypes.CDLL(None).prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), sorted(moved), 'LAMBDA_API_KEY' in os.environ)\n"
    )
    from crucible.scheduler.providers.credentials import PROVIDER_SECRETS

    names = {n for keys in PROVIDER_SECRETS.values() for ns in keys.values() for n in ns}
    env = {k: v for k, v in os.environ.items() if k not in names} | KEYS
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    assert out == ["0", "['LAMBDA_API_KEY',", "'MODAL_TOKEN_SECRET',", "'RUNPOD_API_KEY']", "False"], out

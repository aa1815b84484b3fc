"""How a job's command runs on a rented machine (Lambda, Paperspace, RunPod): a wrapper script and an SSH probe.

The wrapper writes stdout/stderr logs and an exit-code file in a run folder; the probe reads them back over SSH.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import re
import shlex
from pathlib import Path, PurePosixPath
from shlex import quote

from crucible.scheduler.objects.objectstore import check_relative
from crucible.scheduler.providers.base import LaunchSpec, LogChunk, RunState, RunStatus
from crucible.scheduler.providers.http import Settings

DEFAULT_REMOTE_ROOT = "/var/tmp/crucible"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")  # \Z: `$` also accepts a trailing newline


def job_slug(job_id: str) -> str:
    """The job id in lowercase [a-z0-9-], for names providers accept."""
    return re.sub(r"[^a-z0-9-]+", "-", job_id.lower()).strip("-") or "job"


def run_name(spec: LaunchSpec, limit: int = 63) -> str:
    """A provider-safe, deterministic name of one attempt: crucible-<job>-<attempt> (lowercase, [a-z0-9-])."""
    job = job_slug(spec.job_id)
    suffix = f"-{spec.attempt}"
    return ("crucible-" + job)[: limit - len(suffix)].rstrip("-") + suffix


def run_dir(spec: LaunchSpec, root: str = DEFAULT_REMOTE_ROOT) -> str:
    """The run folder of one attempt on the remote machine."""
    return f"{root.rstrip('/')}/{run_name(spec)}"


def job_env(spec: LaunchSpec) -> dict[str, str]:
    """The env a remote command sees: the job's env plus CRUCIBLE_JOB_ID/ATTEMPT/CHECKPOINT_DIR/RESUME."""
    env = {str(k): str(v) for k, v in spec.env.items()}
    for name in env:
        if not _ENV_NAME.match(name):
            raise ValueError(f"env name {name!r} is not a valid variable name")
    env.update({"CRUCIBLE_JOB_ID": spec.job_id, "CRUCIBLE_ATTEMPT": str(spec.attempt)})
    if spec.checkpoint_dir:
        env["CRUCIBLE_CHECKPOINT_DIR"] = spec.checkpoint_dir
    if spec.resume:
        env["CRUCIBLE_RESUME"] = "1"
    return env


#: Exit status the wrapper records when the job's code or inputs could not be fetched or verified.
FETCH_FAILED = 98
NO_CODE_URL = (
    "the job brings code (code_dir or code_archive), which a rented machine fetches from the artifact "
    "store with a presigned URL; the scheduler's store is a local folder (file://) no machine can reach: "
    "set --artifact-store s3://bucket/prefix (with its endpoint and keys), or bake the code into "
    "container_image"
)

#: Downloads $1 to $2 with curl, wget or Python, whichever the image has (retrying transient errors with curl).
FETCH_FUNCTION = """crucible_fetch() {
  if command -v curl >/dev/null 2>&1; then curl -fsS --retry 5 --retry-delay 2 --connect-timeout 20 -o "$2" "$1"
  elif command -v wget >/dev/null 2>&1; then wget -q -T 60 -O "$2" "$1"
  else python3 -c 'import shutil, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=300) as r, open(sys.argv[2], "wb") as f: shutil.copyfileobj(r, f)' "$1" "$2"
  fi
}"""


def needs_fetch(spec: LaunchSpec) -> bool:
    """Whether the machine must fetch code or inputs before the command (ValueError when it has no URL to do it)."""
    if spec.code_dir is not None and not spec.code_url:
        raise ValueError(NO_CODE_URL)
    return bool(spec.code_url or spec.input_urls)


def fetch_script(spec: LaunchSpec, work: str) -> str:
    """Bash that fills the folder `work` with the job's code and inputs, and fails (non-zero) if anything is wrong.

    The code archive is downloaded with the presigned URL, checked against its SHA-256, listed first and refused if a
    member is absolute or has a `..` component, then unpacked by GNU tar without restoring owners. Each input is
    downloaded to its relative path (checked here, as the engine did)."""
    lines = [FETCH_FUNCTION, "set -e", f"mkdir -p {quote(work)}", f"cd {quote(work)}"]
    if spec.code_url:
        if not re.fullmatch(r"[0-9a-f]{64}|<[^\n'\"]*>", spec.code_sha256):  # <...>: a dry-run placeholder
            raise ValueError("code_url needs the archive's lowercase hex SHA-256")
        lines += [
            'CODE_TGZ="$(mktemp)"',
            f'crucible_fetch {quote(spec.code_url)} "$CODE_TGZ"',
            f'echo "{spec.code_sha256}  $CODE_TGZ" | sha256sum -c --status - || '
            '{ echo "[crucible] the code archive does not match its SHA-256" >&2; exit 1; }',
            "if tar -tzf \"$CODE_TGZ\" | grep -Eq '^/|(^|/)[.][.](/|$)'; then "
            'echo "[crucible] the code archive has an absolute or .. member" >&2; exit 1; fi',
            'tar -xzf "$CODE_TGZ" --no-same-owner --no-overwrite-dir -C .',
            'rm -f "$CODE_TGZ"',
        ]
    for rel, url in spec.input_urls:
        rel = check_relative(rel)
        lines += [f"mkdir -p {quote(str(PurePosixPath(rel).parent))}", f"crucible_fetch {quote(url)} {quote(rel)}"]
    return "\n".join(lines) + "\n"


def wrapper_script(spec: LaunchSpec, folder: str, *, export_env: bool = True, docker: bool = False) -> str:
    """A bash script that runs spec.command once, with logs and the exit code written under `folder`.

    It never runs the command twice: after a reboot that interrupted it, it writes `interrupted` instead.
    `export_env=False` when the provider passes env itself (RunPod's env field). `docker=True` (a VM with Docker and
    the NVIDIA runtime, and spec.container_image set) runs the command in that image with all GPUs and the env.
    A job with code or inputs runs in `folder`/work, filled by fetch_script first; if that fails the exit status is
    FETCH_FAILED and stderr.log says why. ValueError: code without a URL (NO_CODE_URL) or a bad spec.
    """
    if not spec.command:
        raise ValueError("command must not be empty")
    fetch = needs_fetch(spec)
    lines = [
        "#!/bin/bash",
        f"# crucible job {spec.job_id} attempt {spec.attempt}",
        "set -u",
        f"RUN_DIR={quote(folder)}",
        'mkdir -p "$RUN_DIR" && chmod 755 "$RUN_DIR"',
        'if [ -e "$RUN_DIR/exit_code" ] || [ -e "$RUN_DIR/interrupted" ]; then exit 0; fi',
        'if [ -e "$RUN_DIR/started" ]; then date +%s > "$RUN_DIR/interrupted"; exit 0; fi',
        'date +%s > "$RUN_DIR/started"',
    ]
    if export_env:
        lines += [f"export {k}={quote(v)}" for k, v in sorted(job_env(spec).items())]
    work = f"{folder}/work"
    if fetch:
        encoded = base64.b64encode(fetch_script(spec, work).encode()).decode()
        lines += [
            f'if ! echo {encoded} | base64 -d | bash 2>"$RUN_DIR/stderr.log" >"$RUN_DIR/stdout.log"; then',
            '  echo "[crucible] could not fetch the job\'s code or inputs" >>"$RUN_DIR/stderr.log"',
            f'  echo {FETCH_FAILED} > "$RUN_DIR/exit_code.tmp" && mv "$RUN_DIR/exit_code.tmp" "$RUN_DIR/exit_code"',
            "  exit 0",
            "fi",
            f"cd {quote(work)}",
        ]
    if spec.checkpoint_dir:
        lines.append(f"mkdir -p {quote(spec.checkpoint_dir)}")
    argv = " ".join(quote(a) for a in spec.command)
    if docker and spec.container_image:
        env_flags = " ".join(f"-e {k}" for k in sorted(job_env(spec)))
        volume = f" -v {quote(spec.checkpoint_dir)}:{quote(spec.checkpoint_dir)}" if spec.checkpoint_dir else ""
        if fetch:
            volume = f" -v {quote(work)}:{quote(work)} -w {quote(work)}"
        argv = f"docker run --rm --gpus all --network host {env_flags}{volume} {quote(spec.container_image)} {argv}"
    if spec.max_duration_s > 0:
        argv = f"timeout --kill-after=30 {int(spec.max_duration_s + 0.999)} {argv}"
    lines += [
        f'{argv} >"$RUN_DIR/stdout.log" 2>"$RUN_DIR/stderr.log" </dev/null',
        "rc=$?",
        'echo "$rc" > "$RUN_DIR/exit_code.tmp" && mv "$RUN_DIR/exit_code.tmp" "$RUN_DIR/exit_code"',
    ]
    return "\n".join(lines) + "\n"


def boot_script(wrapper: str, folder: str) -> str:
    """A boot-time script (cloud-init user data, Paperspace startup script) that starts the wrapper detached."""
    encoded = base64.b64encode(wrapper.encode()).decode()
    return (
        "#!/bin/bash\n"
        f"mkdir -p {quote(folder)}\n"
        f"echo {encoded} | base64 -d > {quote(folder + '/run.sh')}\n"
        f"chmod 755 {quote(folder + '/run.sh')}\n"
        f"nohup setsid bash {quote(folder + '/run.sh')} >/dev/null 2>&1 &\n"
    )


def boot_plan(spec: LaunchSpec, root: str, *, docker: bool) -> tuple[str, str, str]:
    """(run name, run folder, boot script) of a launch on a VM provider (lambda, paperspace).

    ValueError says why the spec cannot run there: code without a presigned URL (a file:// store) or a command the
    wrapper refuses. Code and inputs are fetched by the wrapper (fetch_script) before the command runs.
    """
    folder = run_dir(spec, root)
    return run_name(spec), folder, boot_script(wrapper_script(spec, folder, docker=docker), folder)


#: Env var with one more public key to authorize (the SSH probe's), next to RunPod's account key in $PUBLIC_KEY.
EXTRA_PUBLIC_KEY_ENV = "CRUCIBLE_SSH_PUBLIC_KEY"

#: Brings up sshd in a container whose start command we replace, as RunPod documents for custom start commands
#: ("Connect to a Pod with SSH"; RunPod's own images do the same in start.sh): authorize $PUBLIC_KEY (and the probe's
#: key) in ~/.ssh/authorized_keys, install openssh-server if the image lacks it (Debian/Ubuntu), make host keys, start
#: the ssh service. Its output goes to /tmp/crucible-sshd.log; a failure here never stops the workload.
SSHD_SETUP = f"""(
umask 077
mkdir -p ~/.ssh
for key in "${{PUBLIC_KEY:-}}" "${{{EXTRA_PUBLIC_KEY_ENV}:-}}"; do
  if [ -n "$key" ]; then echo "$key" >> ~/.ssh/authorized_keys; fi
done
chmod 700 ~/.ssh; [ -f ~/.ssh/authorized_keys ] && chmod 600 ~/.ssh/authorized_keys
if ! command -v sshd >/dev/null 2>&1 && [ ! -x /usr/sbin/sshd ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server
fi
ssh-keygen -A
service ssh start || {{ mkdir -p /run/sshd && /usr/sbin/sshd; }}
) >/tmp/crucible-sshd.log 2>&1
"""


def container_args(wrapper: str, *, sshd: bool = False) -> str:
    """A container start command (RunPod dockerArgs) that runs the wrapper, then idles so the outcome stays readable.

    With `sshd`, SSHD_SETUP runs first, so the SSH probe can read the exit code and logs of the run folder.
    """
    encoded = base64.b64encode(wrapper.encode()).decode()
    prelude = ""
    if sshd:
        prelude = f"echo {base64.b64encode(SSHD_SETUP.encode()).decode()} | base64 -d | bash; "
    return shlex.join(
        ["bash", "-c", f"{prelude}echo {encoded} | base64 -d > /tmp/crucible-run.sh && bash /tmp/crucible-run.sh; sleep infinity"]
    )


@dataclasses.dataclass(frozen=True)
class SSHProbe:
    """Reads a run folder on a remote machine with the system `ssh` client (key auth, batch mode, no prompts)."""

    key_path: str
    user: str
    command: str = "ssh"
    connect_timeout_s: int = 10
    known_hosts: str = ""  # empty: ~/.ssh/known_hosts with accept-new

    def argv(self, host: str, port: int, remote: str) -> list[str]:
        """The ssh command line that runs `remote` on host:port."""
        args = [
            *shlex.split(self.command),
            "-i",
            self.key_path,
            "-p",
            str(port),
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=accept-new",
            "-o",
            f"ConnectTimeout={self.connect_timeout_s}",
        ]
        if self.known_hosts:
            args += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        return [*args, f"{self.user}@{host}", remote]

    async def run(self, host: str, port: int, remote: str, timeout_s: float = 60.0) -> tuple[int, bytes, bytes]:
        """(exit status, stdout, stderr) of one remote command; 255 when ssh itself failed or timed out."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv(host, port, remote),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            return 255, b"", f"cannot start ssh: {exc.strerror}".encode()
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return 255, b"", b"ssh timed out"
        return proc.returncode if proc.returncode is not None else 255, out, err

    async def outcome(self, host: str, port: int, folder: str) -> RunStatus:
        """RUNNING, SUCCEEDED/FAILED with the exit code, PREEMPTED after an interrupting reboot, or UNKNOWN."""
        run_folder = quote(folder)
        rc, out, err = await self.run(
            host,
            port,
            f"if [ -e {run_folder}/exit_code ]; then echo exit "
            f"$(cat {run_folder}/exit_code); "
            f"elif [ -e {run_folder}/interrupted ]; then echo interrupted; "
            f"elif [ -e {run_folder}/started ]; then echo running; "
            "else echo waiting; fi",
        )
        if rc != 0:
            return RunStatus(
                RunState.UNKNOWN, message=f"ssh probe failed (status {rc}): {err.decode(errors='replace').strip()[:200]}"
            )
        words = out.decode(errors="replace").split()
        if words[:1] == ["exit"] and len(words) == 2 and words[1].lstrip("-").isdigit():
            code = int(words[1])
            state = RunState.SUCCEEDED if code == 0 else RunState.FAILED
            return RunStatus(state, exit_code=code, message="timed out (max_duration_s)" if code == 124 else "")
        if words == ["interrupted"]:
            return RunStatus(RunState.PREEMPTED, message="the machine rebooted while the command ran")
        if words == ["running"]:
            return RunStatus(RunState.RUNNING)
        if words == ["waiting"]:
            return RunStatus(RunState.PROVISIONING, message="machine up, command not started yet")
        return RunStatus(RunState.UNKNOWN, message=f"unexpected probe answer {out[:80]!r}")

    async def read(self, host: str, port: int, folder: str, stream: str, offset: int, limit: int = 1 << 20) -> bytes | None:
        """Up to `limit` log bytes of `stream` from `offset`, or None when ssh failed."""
        if stream not in ("stdout", "stderr"):
            raise ValueError(f"stream must be stdout or stderr, got {stream!r}")
        path = shlex.quote(f"{folder}/{stream}.log")
        rc, out, _ = await self.run(host, port, f"if [ -e {path} ]; then tail -c +{offset + 1} {path} | head -c {limit}; fi")
        return out if rc == 0 else None


def probe_from_settings(settings: Settings, default_user: str) -> SSHProbe | None:
    """An SSHProbe from settings ssh_key_path (must exist), ssh_user, ssh_command, ssh_known_hosts; None without a
    key."""
    key_path = settings.str("ssh_key_path")
    if not key_path:
        return None
    path = Path(key_path).expanduser()
    if not path.is_file():
        raise ValueError(f"{settings.provider}.ssh_key_path: {key_path} is not a file")
    return SSHProbe(
        str(path),
        settings.str("ssh_user", default_user),
        settings.str("ssh_command", "ssh") or "ssh",
        connect_timeout_s=settings.int("ssh_connect_timeout_s", 10, minimum=1),
        known_hosts=settings.str("ssh_known_hosts"),
    )


NO_PROBE = "exit code not observable without ssh: set ssh_key_path (see providers/README.md)"


async def read_remote_log(
    probe: SSHProbe | None, host: str, port: int, folder: str, stream: str, offset: int, limit: int = 1 << 20
) -> LogChunk:
    """A LogChunk read over SSH; an empty chunk when no probe is configured, the host is unknown or ssh failed."""
    if stream not in ("stdout", "stderr"):
        raise ValueError(f"stream must be stdout or stderr, got {stream!r}")
    if probe is None or not host:
        return LogChunk(stream, offset, b"", offset)
    data = await probe.read(host, port, folder, stream, offset, limit)
    data = data or b""
    return LogChunk(stream, offset, data, offset + len(data))

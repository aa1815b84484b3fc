"""Unit tests of the providers' shared parts: secrets (store, file, scrubbing), retry policy, settings, remote wrapper.

The wrapper script is executed for real with bash in a temporary folder standing in for the remote machine.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from pathlib import Path

import pytest

from crucible.scheduler.providers import remote
from crucible.scheduler.providers.base import LaunchSpec, OfferRef, RunState
from crucible.scheduler.providers.credentials import Secret, SecretsFileError, SecretStore, scrub
from crucible.scheduler.providers.http import RetryPolicy, Settings, parse_retry_after
from tests.fakes.ssh import make_fake_ssh

KEY = "sk-live-7f3a9c1d2e4b5a6f"


def spec(tmp_path: Path, command: tuple[str, ...], **kw) -> LaunchSpec:
    """A launch spec for tests."""
    return LaunchSpec(
        job_id=kw.pop("job_id", "Job_42"),
        attempt=kw.pop("attempt", 1),
        command=command,
        env=kw.pop("env", {"GREETING": "hello world"}),
        offer=OfferRef("test", "t1"),
        work_dir=tmp_path,
        **kw,
    )


# --- secrets ---------------------------------------------------------------------------------------------------------


def test_secret_never_prints_its_value():
    s = Secret(KEY)
    assert KEY not in repr(s) and KEY not in str(s) and KEY not in f"{s}" and KEY not in f"{s!r}"
    assert s.reveal() == KEY
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(s)


def test_env_wins_over_file_and_file_is_read(tmp_path):
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps({"lambda": {"api_key": "from-file-1234"}, "runpod": {"api_key": "rp-file-5678"}}))
    path.chmod(0o600)
    store = SecretStore(env={"LAMBDA_API_KEY": KEY, "CRUCIBLE_SECRETS_FILE": str(path)})
    assert store.get("lambda", "api_key").reveal() == KEY
    assert store.get("runpod", "api_key").reveal() == "rp-file-5678"
    assert store.get("paperspace", "api_key") is None
    assert "LAMBDA_API_KEY" in store.hint("lambda", "api_key") and "lambda.api_key" in store.hint("lambda", "api_key")
    assert KEY not in repr(store) and "rp-file-5678" not in repr(store)
    assert "lambda" in repr(store) and "runpod" in repr(store)


def test_toml_file_and_world_readable_warning(tmp_path, caplog):
    path = tmp_path / "secrets.toml"
    path.write_text('[replicate]\napi_token = "r8_abcdefgh"\n')
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        store = SecretStore(env={}, path=path)
    assert store.get("replicate", "api_token").reveal() == "r8_abcdefgh"
    assert "chmod 600" in caplog.text and "r8_abcdefgh" not in caplog.text


@pytest.mark.parametrize(
    "content",
    [
        '{"lambda": {"api_key": "sk-leak-0000"',
        '["sk-leak-0000"]',
        '{"lambda": {"api_key": 12345678}}',
        '{"lambda": "sk-leak-0000"}',
    ],
)
def test_bad_secrets_file_errors_never_quote_content(tmp_path, content):
    path = tmp_path / "secrets.json"
    path.write_text(content)
    with pytest.raises(SecretsFileError) as info:
        SecretStore(env={}, path=path)
    assert "sk-leak-0000" not in str(info.value) and "12345678" not in str(info.value)
    assert str(path) in str(info.value)


def test_missing_secrets_file_is_an_error(tmp_path):
    with pytest.raises(SecretsFileError, match="does not exist"):
        SecretStore(env={"CRUCIBLE_SECRETS_FILE": str(tmp_path / "nope.json")})


def test_scrub_removes_known_values_and_token_shapes():
    store = SecretStore(env={"RUNPOD_API_KEY": KEY})
    text = f"GET https://api.runpod.io/graphql?api_key={KEY} failed; header Authorization: Bearer abc.DEF-123 {KEY}"
    out = store.scrub(text)
    assert KEY not in out and "abc.DEF-123" not in out and out.count("***") >= 3
    assert scrub('{"token": "zzz-secret-zzz"}') == '{"token": "***"}'


# --- retry policy and settings ---------------------------------------------------------------------------------------


def test_retry_policy_backoff_and_retry_after():
    policy = RetryPolicy(max_retries=3, base_s=1.0, max_s=4.0, max_retry_after_s=10.0)
    for retry in range(3):
        delay = policy.delay(retry, None)
        assert 0 <= delay <= min(4.0, 2**retry)
    assert policy.delay(3, None) is None
    assert policy.delay(0, 7.0) == 7.0
    assert policy.delay(0, 11.0) is None  # longer than we are willing to wait: give up, the caller fails over


def test_parse_retry_after_seconds_and_date():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_settings_errors_name_the_field():
    s = Settings("lambda", {"timeout_s": "fast", "max_retries": "-1", "use_docker": "maybe"})
    with pytest.raises(ValueError, match=r"lambda\.timeout_s"):
        s.float("timeout_s", 1.0)
    with pytest.raises(ValueError, match=r"lambda\.max_retries"):
        s.int("max_retries", 1)
    with pytest.raises(ValueError, match=r"lambda\.use_docker"):
        s.bool("use_docker")


# --- remote wrapper and ssh probe ------------------------------------------------------------------------------------


def test_run_name_is_provider_safe():
    s = LaunchSpec("My Job/ÄÖ_1", 3, ("true",), {}, OfferRef("x", "y"), Path("."))
    name = remote.run_name(s)
    assert name.startswith("crucible-my-job-") and name.endswith("-3") and len(name) <= 63
    long = LaunchSpec("x" * 200, 12, ("true",), {}, OfferRef("x", "y"), Path("."))
    assert len(remote.run_name(long)) == 63 and remote.run_name(long).endswith("-12")


def test_bad_env_name_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="not a valid variable name"):
        remote.wrapper_script(spec(tmp_path, ("true",), env={"BAD NAME": "x"}), str(tmp_path))


def run_wrapper(script: str, tmp_path: Path) -> None:
    path = tmp_path / "run.sh"
    path.write_text(script)
    subprocess.run(["bash", str(path)], check=True, timeout=30)


def test_wrapper_runs_once_with_env_logs_and_exit_code(tmp_path):
    folder = tmp_path / "run"
    s = spec(
        tmp_path,
        ("sh", "-c", 'echo "$GREETING $CRUCIBLE_JOB_ID $CRUCIBLE_RESUME"; echo oops >&2; exit 3'),
        resume=True,
        checkpoint_dir=str(tmp_path / "ckpt"),
    )
    script = remote.wrapper_script(s, str(folder))
    run_wrapper(script, tmp_path)
    assert (folder / "stdout.log").read_text() == "hello world Job_42 1\n"
    assert (folder / "stderr.log").read_text() == "oops\n"
    assert (folder / "exit_code").read_text().strip() == "3"
    assert (tmp_path / "ckpt").is_dir()
    run_wrapper(script, tmp_path)  # a second boot never runs the command again
    assert (folder / "stdout.log").read_text() == "hello world Job_42 1\n"


def test_wrapper_marks_an_interrupted_run(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "started").write_text("1")  # it started before a reboot and never wrote exit_code
    run_wrapper(remote.wrapper_script(spec(tmp_path, ("true",)), str(folder)), tmp_path)
    assert (folder / "interrupted").exists() and not (folder / "exit_code").exists()


def test_wrapper_enforces_max_duration(tmp_path):
    folder = tmp_path / "run"
    run_wrapper(remote.wrapper_script(spec(tmp_path, ("sleep", "30"), max_duration_s=0.5), str(folder)), tmp_path)
    assert (folder / "exit_code").read_text().strip() == "124"


def test_boot_script_and_container_args_carry_the_wrapper(tmp_path):
    folder = tmp_path / "run"
    wrapper = remote.wrapper_script(spec(tmp_path, ("sh", "-c", "echo boot")), str(folder))
    subprocess.run(["bash", "-c", remote.boot_script(wrapper, str(folder))], check=True, timeout=30)
    for _ in range(200):
        if (folder / "exit_code").exists():
            break
        time.sleep(0.05)
    assert (folder / "stdout.log").read_text() == "boot\n" and (folder / "run.sh").read_text() == wrapper
    args = remote.container_args(wrapper)
    assert args.startswith("bash -c ") and "sleep infinity" in args


async def test_ssh_probe_reads_outcome_and_logs(tmp_path):
    ssh, fail_flag, calls = make_fake_ssh(tmp_path / "ssh")
    key = tmp_path / "id_ed25519"
    key.write_text("not a real key")
    probe = remote.probe_from_settings(Settings("lambda", {"ssh_key_path": str(key), "ssh_command": str(ssh)}), "ubuntu")
    folder = tmp_path / "run"
    assert (await probe.outcome("10.0.0.1", 22, str(folder))).state is RunState.PROVISIONING
    run_wrapper(remote.wrapper_script(spec(tmp_path, ("sh", "-c", "printf 'abcdef'; exit 0")), str(folder)), tmp_path)
    status = await probe.outcome("10.0.0.1", 22, str(folder))
    assert status.state is RunState.SUCCEEDED and status.exit_code == 0
    chunk = await remote.read_remote_log(probe, "10.0.0.1", 22, str(folder), "stdout", 2)
    assert chunk.data == b"cdef" and chunk.next_offset == 6
    assert "ubuntu@10.0.0.1" in calls.read_text() and "BatchMode=yes" in calls.read_text()
    fail_flag.write_text("1")
    status = await probe.outcome("10.0.0.1", 22, str(folder))
    assert status.state is RunState.UNKNOWN and "Connection refused" in status.message
    with pytest.raises(ValueError, match="ssh_key_path"):
        remote.probe_from_settings(Settings("lambda", {"ssh_key_path": str(tmp_path / "missing")}), "ubuntu")

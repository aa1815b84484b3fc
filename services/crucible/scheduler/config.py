"""Settings of the scheduler service: one frozen dataclass filled from flags and CRUCIBLE_SCHEDULER_* / CRUCIBLE_* env.

Every field is documented where it is declared; `crucible serve scheduler --help` lists them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

from crucible.runtime.config import ServerConfig, read_token_file, setting
from crucible.runtime.errors import ConfigError
from crucible.scheduler.objects.objectstore import StoreSettings, default_store_url
from crucible.scheduler.providers.sandbox import parse_uid_range

if TYPE_CHECKING:
    from crucible.clients.channel import ChannelConfig

ALL_PROVIDERS = ("local", "dryrun", "kubernetes", "lambda", "runpod", "paperspace", "replicate", "modal", "colab")


@dataclasses.dataclass(frozen=True)
class SchedulerConfig(ServerConfig):
    """GPU jobs on local and remote providers with durable state, logs, progress and checkpoints."""

    port: int = setting(50054, "gRPC port of the scheduler service.")
    state_dir: str = setting(
        "",
        "Folder for the job database (scheduler.db) and each job's folder (jobs/<id>/: work, logs, attempts). "
        "Set by --state-dir, CRUCIBLE_SCHEDULER_STATE_DIR or, shared with the cost service, CRUCIBLE_STATE_DIR itself "
        "(no subfolder: the file names differ). Empty means ~/.local/share/crucible/scheduler.",
    )
    database: str = setting("", "SQLite job database; empty means <state_dir>/scheduler.db.")
    sqlite_synchronous: str = setting(
        "FULL",
        "SQLite synchronous mode in WAL: FULL survives power loss, NORMAL only process crashes (faster).",
        choices=("FULL", "NORMAL"),
    )
    cost_address: str = setting(
        "",
        "host:port of the cost service (offers, estimates, admission, usage). Empty: only local and dryrun jobs run, "
        "with cost reported as unknown.",
    )
    cost_timeout_s: float = setting(5.0, "Deadline of each call to the cost service, in seconds.")
    cost_token_file: str = setting(
        "",
        "File whose first line is the bearer token sent to the cost service (a file without a token refuses the "
        "start). Empty: the scheduler's own token (auth_token / auth_token_file, e.g. CRUCIBLE_AUTH_TOKEN_FILE, which "
        "a mesh shares), or none.",
    )
    cost_tls: bool = setting(False, "Reach the cost service over TLS (system roots unless cost_ca_file is set).")
    cost_ca_file: str = setting("", "PEM CA bundle that signed the cost service's certificate; implies cost_tls.")
    cost_tls_server_name: str = setting("", "Name checked against the cost service's certificate; empty: its host.")
    providers: tuple[str, ...] = setting(ALL_PROVIDERS, "Providers the scheduler may launch on (comma-separated).")
    provider_settings_file: str = setting(
        "", 'JSON file of per-provider settings, e.g. {"lambda": {"base_url": "..."}, "dryrun": {"duration_s": "1"}}.'
    )
    poll_interval_s: float = setting(1.0, "Seconds between status polls (and log reads) of a running attempt.")
    usage_interval_s: float = setting(60.0, "Seconds of runtime between usage records sent to the cost service.")
    default_max_duration_s: float = setting(86400.0, "Wall-clock limit of a job whose spec sets no max_duration.")
    default_budget_scope: str = setting("", "Budget scope of jobs whose spec sets none; empty charges only global budgets.")
    max_recoveries: int = setting(10, "Relaunches after preemption or a lost machine before the job is FAILED.")
    transient_retries: int = setting(2, "Retries of a launch that failed with a transient provider error before failover.")
    local_gpus: int = setting(-1, "GPUs the local provider may use; -1 counts /proc/driver/nvidia/gpus.")
    code_roots: tuple[str, ...] = setting(
        (),
        "Folders (comma-separated) a JobSpec.code_dir may name: the path, symlinks resolved, must lie inside one. "
        "Empty (the default for a server) refuses every code_dir; clients send the folder packed as code_archive "
        "(the CLI and SDK do this by default). `crucible up` and the demo allow their working directory.",
    )
    code_max_bytes: int = setting(
        1 << 30, "Largest total size in bytes of a job's code: the files under code_dir, or code_archive once unpacked."
    )
    code_max_files: int = setting(20000, "Most files and folders in a job's code (code_dir or code_archive).")
    log_cap_bytes: int = setting(
        1 << 30,
        "Bytes of stdout and of stderr (each) kept per job, across attempts. Output past it is dropped and "
        "counted in Job.log_bytes_dropped, and a marker line says so in the log.",
    )
    job_uid_range: str = setting(
        "200000-265535",
        "Uids local jobs run as, FIRST-LAST: each attempt gets one no process is using, in a bubblewrap sandbox "
        '(own PID namespace, private /tmp, only its folders writable; scheduler README "Local provider"). '
        "No /etc/passwd entry is needed. As a non-root scheduler the uid maps to the scheduler's own.",
    )
    local_python: str = setting(
        "",
        "Python environment local jobs run with (a python executable): its bin folder first on the job's PATH, "
        "VIRTUAL_ENV set for a venv, its folders read-only in the sandbox. Empty: the scheduler's own Python.",
    )
    local_read_only: tuple[str, ...] = setting(
        (), "Extra folders (comma-separated, absolute) local jobs may read in their sandbox, e.g. a model cache."
    )
    unsafe_local_jobs: bool = setting(
        False,
        "Run local jobs WITHOUT the sandbox, as the scheduler's own user (they can then read and change everything "
        "it can). Off: where the sandbox cannot be had (no bwrap, or its start-up self-test fails) local jobs are "
        "refused and ListProviders says why.",
    )

    artifact_store: str = setting(
        "",
        'Object store for each job\'s code, checkpoints, artifacts and staged inputs (README "Object store"): '
        "file:///absolute/folder or s3://bucket/prefix. Empty means file://<state_dir>/store. Remote providers that "
        "fetch code by URL (lambda, paperspace, runpod, kubernetes) need s3://.",
    )
    artifact_store_endpoint: str = setting("", "S3 endpoint URL (MinIO, R2, ...); empty: AWS's, or AWS_ENDPOINT_URL.")
    artifact_store_access_key: str = setting("", "S3 access key id; empty: the usual AWS environment and files.")
    artifact_store_secret_key: str = setting("", "S3 secret access key; empty: the usual AWS environment and files.", secret=True)
    artifact_store_region: str = setting("", "S3 region; empty: the environment's or us-east-1.")
    artifact_store_role_arn: str = setting(
        "",
        "S3 only: an IAM role the scheduler assumes (STS) for each job with a session policy limited to that job's "
        "prefix, so jobs get short-lived keys that reach only their own objects. Empty: jobs get no store keys.",
    )
    artifact_store_share_credentials: bool = setting(
        False,
        "S3 without a role: give jobs the scheduler's own store keys (they then reach every job's objects). Off by default.",
    )
    artifact_retention_days: float = setting(
        0.0,
        "Days after a job ends before its store objects and working folder are removed; 0 keeps them until "
        "DeleteJobArtifacts (`crucible jobs artifacts JOB --delete`).",
    )
    artifact_max_bytes: int = setting(
        16 << 30,
        "Largest total size in bytes of a job's output files uploaded to the store after each attempt; "
        "past it the largest files are left out and a warning names them.",
    )
    code_url_ttl_s: int = setting(
        3600, "Lifetime in seconds of the presigned URL a remote machine fetches the job's code and inputs with."
    )
    input_roots: tuple[str, ...] = setting(
        (),
        "Where JobSpec.inputs may come from (comma-separated): file:///folder (symlinks resolved) or "
        "s3://bucket/prefix. Built-ins (builtin:tinyshakespeare) are always allowed; empty refuses the rest.",
    )
    input_max_bytes: int = setting(4 << 30, "Largest total size in bytes of a job's inputs.")
    input_max_files: int = setting(100_000, "Most files (or objects) in all of a job's inputs.")

    protect_process: bool = setting(
        True,
        "At start, make the process non-dumpable (prctl PR_SET_DUMPABLE 0: its /proc environ and memory need root "
        "to read) and remove provider keys from its environment once the adapters have read them.",
    )

    def validate(self) -> None:
        super().validate()
        unknown = [p for p in self.providers if p not in ALL_PROVIDERS]
        if unknown:
            raise ConfigError("providers", f"unknown provider(s) {', '.join(unknown)}; choose from {', '.join(ALL_PROVIDERS)}")
        for name in ("poll_interval_s", "usage_interval_s", "default_max_duration_s", "cost_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(name, "must be positive")
        try:
            parse_uid_range(self.job_uid_range)
        except ValueError as exc:
            raise ConfigError("job_uid_range", str(exc)) from None
        for folder in self.local_read_only:
            if not Path(folder).is_absolute():
                raise ConfigError("local_read_only", f"{folder!r} is not an absolute path")
        if self.max_recoveries < 0 or self.transient_retries < 0:
            raise ConfigError("max_recoveries" if self.max_recoveries < 0 else "transient_retries", "must not be negative")
        if self.provider_settings_file:
            self.provider_settings()
        for name in ("code_max_bytes", "code_max_files", "log_cap_bytes"):
            if getattr(self, name) <= 0:
                raise ConfigError(name, "must be positive")
        for name in ("artifact_max_bytes", "code_url_ttl_s", "input_max_bytes", "input_max_files"):
            if getattr(self, name) <= 0:
                raise ConfigError(name, "must be positive")
        if self.artifact_retention_days < 0:
            raise ConfigError("artifact_retention_days", "must not be negative")
        if self.artifact_store and not self.artifact_store.startswith(("file:///", "s3://")):
            raise ConfigError("artifact_store", "must be file:///absolute/folder or s3://bucket/prefix")
        for root in self.input_roots:
            if not root.startswith(("file:///", "s3://")):
                raise ConfigError("input_roots", f"{root!r} must be file:///folder or s3://bucket/prefix")
        for name in ("cost_token_file", "cost_ca_file"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise ConfigError(name, f"file not found: {path}")
        self.cost_credentials()  # fail closed: a token file without a token or a CA file that does not parse
        for root in self.code_roots:
            if not Path(root).expanduser().is_dir():
                raise ConfigError("code_roots", f"{root!r} is not a folder")

    def cost_channel_config(self) -> ChannelConfig:
        """How the scheduler reaches the cost service: cost_address with its own deadline, token and TLS settings."""
        from crucible.clients.channel import ChannelConfig  # grpc: not needed by `crucible up` reading the config

        token, root_certificates = self.cost_credentials()
        return ChannelConfig(
            addresses=(self.cost_address,),
            token=token,
            tls=self.cost_tls or bool(self.cost_ca_file),
            root_certificates=root_certificates,
            tls_server_name=self.cost_tls_server_name,
            timeout_s=self.cost_timeout_s,
        )

    def cost_credentials(self) -> tuple[str, bytes | None]:
        """(token, CA bundle or None) for the cost service, checked: ConfigError naming cost_token_file or cost_ca_file
        when a file holds no token or no parsable PEM certificate."""
        token = read_token_file(self.cost_token_file, "cost_token_file") if self.cost_token_file else self.bearer_token()
        if not self.cost_ca_file:
            return token, None
        from crucible.clients.credfiles import CredentialFileError, read_ca_file

        try:
            return token, read_ca_file(self.cost_ca_file, "cost_ca_file")
        except CredentialFileError as err:
            raise ConfigError(err.setting, err.detail) from None

    def resolved_state_dir(self) -> Path:
        """The state folder, defaults applied."""
        if self.state_dir:  # CRUCIBLE_STATE_DIR, when set, arrives here through the config loader
            return Path(self.state_dir).expanduser()
        return Path.home() / ".local" / "share" / "crucible" / "scheduler"

    def store_settings(self) -> StoreSettings:
        """The artifact store's settings, defaults applied."""
        return StoreSettings(
            url=self.artifact_store or default_store_url(self.resolved_state_dir()),
            endpoint_url=self.artifact_store_endpoint,
            access_key=self.artifact_store_access_key,
            secret_key=self.artifact_store_secret_key,
            region=self.artifact_store_region,
            role_arn=self.artifact_store_role_arn,
            share_credentials=self.artifact_store_share_credentials,
        )

    def resolved_code_roots(self) -> tuple[Path, ...]:
        """The code_dir allow-list, each root resolved (symlinks followed)."""
        return tuple(Path(r).expanduser().resolve() for r in self.code_roots)

    def resolved_database(self) -> Path:
        """The SQLite file, defaults applied."""
        return Path(self.database).expanduser() if self.database else self.resolved_state_dir() / "scheduler.db"

    def provider_settings(self) -> dict[str, dict[str, str]]:
        """Per-provider string settings from provider_settings_file ({} when unset)."""
        if not self.provider_settings_file:
            return {}
        try:
            data = json.loads(Path(self.provider_settings_file).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError("provider_settings_file", f"cannot read JSON: {exc}") from None
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise ConfigError("provider_settings_file", "must be an object of provider -> object of settings")
        return {str(p): {str(k): str(v) for k, v in table.items()} for p, table in data.items()}

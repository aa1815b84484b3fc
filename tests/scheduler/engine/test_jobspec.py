"""JobSpec checks (engine/jobspec.py): every bad field named, unknown providers, archive members escaping."""

from __future__ import annotations

import io
import tarfile

import pytest

from crucible.api.scheduler.v1 import job_pb2
from crucible.runtime.errors import InvalidArgument, NotFound
from crucible.scheduler import convert
from crucible.scheduler.domain.spec import JobSpec
from crucible.scheduler.engine import jobspec


def _spec(**kw) -> JobSpec:
    """The spec as the servicer hands it to the engine: the request's message read at the edge."""
    base = dict(command=["python", "train.py"], provider_policy=job_pb2.PROVIDER_POLICY_CHEAPEST)
    base.update(kw)
    return convert.spec(job_pb2.JobSpec(**base))


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (_spec(command=[]), "spec.command"),
        (_spec(command=["", "x"]), "spec.command[0]"),
        (_spec(env={"CRUCIBLE_JOB_ID": "x"}), "spec.env[CRUCIBLE_JOB_ID]"),
        (_spec(env={"1BAD": "x"}), "spec.env[1BAD]"),
        (_spec(provider_policy=job_pb2.PROVIDER_POLICY_UNSPECIFIED), "spec.provider_policy"),
        (_spec(provider_policy=job_pb2.PROVIDER_POLICY_EXPLICIT), "spec.providers"),
        (_spec(providers=["local", "local"]), "spec.providers[1]"),
        (_spec(checkpoint_dir="../x"), "spec.checkpoint_dir"),
        (_spec(checkpoint_dir="/abs"), "spec.checkpoint_dir"),
        (_spec(budget_scope="Alice"), "spec.budget_scope"),
        (_spec(max_cost_usd=-1), "spec.max_cost_usd"),
        (_spec(code_dir="relative/path"), "spec.code_dir"),
        (_spec(resources={"gpu_count": 0, "gpu_names": ["A100"]}), "spec.resources.gpu_count"),
    ],
)
def test_spec_validation_names_the_field(spec: JobSpec, field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        jobspec.validate_spec(spec, "", {"local", "dryrun"})
    assert err.value.field_violations[0][0] == field


def test_unknown_provider_is_not_found() -> None:
    with pytest.raises(NotFound):
        jobspec.validate_spec(_spec(providers=["nimbus"]), "", {"local"})


def test_archive_members_escaping_are_rejected() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        info = tarfile.TarInfo("../evil.py")
        info.size = 1
        t.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(InvalidArgument):
        jobspec.check_archive(buf.getvalue())
    with pytest.raises(InvalidArgument):
        jobspec.check_archive(b"not an archive at all")

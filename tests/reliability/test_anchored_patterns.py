"""Every validated scope, id and name matches to its true end: a value with a trailing newline is refused.

With `$` a pattern also matches before a final "\\n", so `team:x\\n` passed as a scope and spent past the hard budget
of `team:x` (issue 22, probe 11). Each validator the services and the SDK have is tried here with such a value.
"""

from __future__ import annotations

import grpc
import pytest

from crucible.api.cost.v1 import cost_service_pb2 as pb
from crucible.clients import checkpoint
from crucible.cost import catalog, catalog_build
from crucible.cost.budgets import BudgetStore, Enforcement, check_scope
from crucible.models import registry
from crucible.runtime.errors import FailedPrecondition, InvalidArgument
from crucible.scheduler import convert
from crucible.scheduler.engine import jobspec
from crucible.scheduler.objects import objectstore
from crucible.scheduler.providers import remote, replicate
from tests.service.test_cost_service import _budget_request, _error, _usage, cost_server

NEWLINE_ENDINGS = ("\n", "\r\n")


@pytest.mark.parametrize("ending", NEWLINE_ENDINGS)
def test_budget_scope_with_a_trailing_newline_is_invalid(ending: str) -> None:
    assert check_scope("team:x", "scope", allow_empty=False) == "team:x"
    with pytest.raises(InvalidArgument) as err:
        check_scope("team:x" + ending, "scope", allow_empty=False)
    assert err.value.reason == "BAD_SCOPE" and err.value.field_violations[0][0] == "scope"


def test_spend_on_a_newline_scope_cannot_pass_a_hard_budget(tmp_path) -> None:
    store = BudgetStore(tmp_path / "cost.sqlite3")
    try:
        store.create_budget(
            scope="team:x",
            display_name="tiny",
            limit_usd=0.01,
            thresholds=(),
            enforcement=Enforcement.HARD,
            request_id="",
            now_ns=1,
        )
        with pytest.raises(InvalidArgument):
            store.check_admission("team:x\n", 100.0, "job-1")
        with pytest.raises(FailedPrecondition):  # the hard budget of team:x itself refuses the same spend
            store.check_admission("team:x", 100.0, "job-1")
    finally:
        store.close()


async def test_the_cost_service_answers_invalid_argument_for_newline_scopes(tmp_path) -> None:
    async with cost_server(tmp_path) as (_, stub):
        for call in (
            stub.CreateBudget(_budget_request(scope="team:x\n", limit=0.01), timeout=5),
            stub.RecordUsage(_usage(scope="team:x\n"), timeout=5),
            stub.CheckAdmission(pb.CheckAdmissionRequest(scope="team:x\n", estimated_cost_usd=100.0), timeout=5),
            stub.ListBudgets(pb.ListBudgetsRequest(scope="team:x\n"), timeout=5),
        ):
            code, _info, violations = await _error(call)
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert violations and violations[0][0].endswith("scope")


@pytest.mark.parametrize("ending", NEWLINE_ENDINGS)
def test_job_specs_refuse_newline_scopes_and_env_names(ending: str) -> None:
    from crucible.api.scheduler.v1 import job_pb2

    def spec(**fields: object) -> job_pb2.JobSpec:
        return job_pb2.JobSpec(
            command=["python", "train.py"],
            provider_policy=job_pb2.PROVIDER_POLICY_CHEAPEST,
            **fields,  # type: ignore[arg-type]
        )

    for bad, field in ((spec(budget_scope="team:x" + ending), "budget_scope"), (spec(env={"HOME" + ending: "x"}), "env")):
        with pytest.raises(InvalidArgument) as err:
            jobspec.validate_spec(convert.spec(bad), "", ("local",))  # as the servicer hands it on
        assert field in err.value.field_violations[0][0], err.value.message


def test_store_prefixes_refuse_newline_job_ids(tmp_path) -> None:
    assert objectstore.JOB_ID.match("job-1") and not objectstore.JOB_ID.match("job-1\n")


def test_remote_env_names_refuse_a_trailing_newline() -> None:
    assert remote._ENV_NAME.match("PATH") and not remote._ENV_NAME.match("PATH\n")


def test_replicate_trainer_refuses_a_trailing_newline() -> None:
    good = "owner/model:abc123"
    assert replicate._TRAINER.match(good) and not replicate._TRAINER.match(good + "\n")


def test_catalog_provider_names_and_commits_refuse_a_trailing_newline() -> None:
    assert catalog._NAME.match("lambda") and not catalog._NAME.match("lambda\n")
    commit = "0123456789abcdef0123456789abcdef01234567"
    assert catalog_build._COMMIT.match(commit) and not catalog_build._COMMIT.match(commit + "\n")


def test_model_ids_and_snapshot_hashes_refuse_a_trailing_newline() -> None:
    assert not registry._looks_like_path("org/model") and registry._looks_like_path("org/model\n")
    commit = "0123456789abcdef0123456789abcdef01234567"
    assert registry._COMMIT_HASH.match(commit) and not registry._COMMIT_HASH.match(commit + "\n")


def test_checkpoint_folders_refuse_a_trailing_newline() -> None:
    assert checkpoint._STEP_DIR.fullmatch("step-000000000001")
    assert not checkpoint._STEP_DIR.fullmatch("step-000000000001\n")


def test_no_validation_pattern_anchors_with_a_dollar() -> None:
    """A source scan: no compiled validation pattern in these modules ends in `$` (use fullmatch or \\Z)."""
    import inspect
    import re

    for module in (jobspec, objectstore, remote, replicate, catalog, catalog_build, registry, checkpoint):
        source = inspect.getsource(module)
        found = re.findall(r're\.(?:compile|match|fullmatch)\(\s*r?"[^"\n]*\$"', source)
        assert not found, f"{module.__name__}: {found}"

"""Property-based fuzzing of every RPC of the five services with requests generated from the message descriptors.

Whatever arrives, a server answers with a status the caller caused (never INTERNAL, UNKNOWN, UNAVAILABLE) and stays SERVING.
"""

from __future__ import annotations

import collections
import io
import os
import tarfile
import zipfile
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability.protostrategies import MessageStrategies, mutations, text_strategy
from tests.reliability.seeds import SEED_CODES
from tests.reliability.support import (
    AUTH,
    SERVER_FAULTS,
    SERVING,
    Running,
    all_methods,
    call,
    health,
    request_class,
)

EXAMPLES = int(os.environ.get("CRUCIBLE_FUZZ_EXAMPLES", "30"))
# Where an archive member that escaped the job's working directory would land (checked after the CreateJob fuzz).
ESCAPE = Path(f"/tmp/crucible-fuzz-escape-{os.getpid()}.txt")
SEEN: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


def _archives() -> list[bytes]:
    """A valid .tar.gz, and a .tar.gz and a .zip whose member climbs out of the working directory."""
    out = []
    for name in ("train.py", "../" * 12 + str(ESCAPE).lstrip("/")):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            data = b"print('hello')\n"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        out.append(buf.getvalue())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("../" * 12 + str(ESCAPE).lstrip("/"), "escaped")
    out.append(buf.getvalue())
    return out


@pytest.fixture(scope="module")
def strategies(seeds: dict[str, list], tmp_path_factory: pytest.TempPathFactory) -> MessageStrategies:
    """Descriptor-driven strategies; the ids that exist (a finished job, a budget, an offer) are mixed into the id
    fields so random requests also reach the code behind a successful lookup."""
    s, c = "crucible.scheduler.v1.SchedulerService.", "crucible.cost.v1.CostService."
    job_id, budget_id = seeds[s + "GetJob"][0].job_id, seeds[c + "GetBudget"][0].budget_id
    offer_id = seeds[c + "EstimateCost"][0].offer_id
    code = tmp_path_factory.mktemp("fuzz-code")
    (code / "train.py").write_text("print('hi')\n")
    text = text_strategy()
    return MessageStrategies(
        {
            "job_id": st.sampled_from([job_id]) | text,
            "budget_id": st.sampled_from([budget_id]) | text,
            "offer_id": st.sampled_from([offer_id, "lambda/gpu_1x_a10//on-demand", "local/cpu//on-demand"]) | text,
            "path": st.sampled_from(["result.txt", "logs/stdout.log", "checkpoints"]) | text,
            # Never a real directory that is large ('/', '.'): the scheduler copies code_dir into the job folder.
            "crucible.scheduler.v1.JobSpec.code_dir": st.sampled_from(
                ["", "/nonexistent/crucible-fuzz", str(code), "relative/dir", "../.."]
            ),
            "crucible.scheduler.v1.JobSpec.code_archive": st.sampled_from(_archives()) | st.binary(max_size=64),
        }
    )


def test_seed_requests_are_valid(fleet: dict[str, Running], seeds: dict[str, list]) -> None:
    """Every seed is accepted (or answers its documented error), so mutations of it probe one check at a time."""
    assert set(seeds) == {m.full_name for _, m in all_methods()}
    for service, method in all_methods():
        with grpc.insecure_channel(fleet[service].address) as channel:
            for seed in seeds[method.full_name]:
                code = call(channel, method, [seed], timeout=30, metadata=AUTH, max_responses=_max_responses(method))
                want = SEED_CODES.get(method.full_name, grpc.StatusCode.OK)
                assert code in (want, grpc.StatusCode.CANCELLED if method.name.startswith("Watch") else want), (
                    f"{method.full_name}: {code.name} for {seed}"
                )


def _max_responses(method: MethodDescriptor) -> int:
    # Watch streams stay open by design: the first message proves the call worked; other streams are read to the end.
    return 1 if method.name.startswith("Watch") else 64


@pytest.mark.slow
@pytest.mark.parametrize(("service", "method"), all_methods(), ids=lambda v: v if isinstance(v, str) else v.name)
def test_no_request_makes_a_server_fail(
    fleet: dict[str, Running], seeds: dict[str, list], strategies: MessageStrategies, service: str, method: MethodDescriptor
) -> None:
    _fuzz(fleet, seeds, strategies, service, method, EXAMPLES)


def _fuzz(
    fleet: dict[str, Running],
    seeds: dict[str, list],
    strategies: MessageStrategies,
    service: str,
    method: MethodDescriptor,
    examples: int,
) -> None:
    """Send `examples` generated requests (random and mutated seeds) to one RPC; no server fault, still SERVING."""
    target = fleet[service]
    random = strategies.for_message(request_class(method).DESCRIPTOR)
    mutated = st.one_of(*(mutations(seed, strategies) for seed in seeds[method.full_name]))
    requests = random | mutated
    drawn = st.lists(requests, min_size=1, max_size=3) if method.client_streaming else st.tuples(requests)
    internal_before = target.handled("INTERNAL") + target.handled("UNKNOWN")
    channel = grpc.insecure_channel(target.address)

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    @given(batch=drawn)
    def check(batch) -> None:
        code = call(channel, method, list(batch), timeout=20, metadata=AUTH, max_responses=_max_responses(method))
        SEEN[f"{service}.{method.name}"][code.name] += 1
        assert code not in SERVER_FAULTS, f"{method.full_name} answered {code.name} to {list(batch)}"
        assert health(channel, target.service) == SERVING, f"{target.service} left SERVING after {list(batch)}"

    try:
        check()
    finally:
        channel.close()
    # Also what the client may not have seen (a stream we stopped reading): the server's own count of failures.
    assert target.handled("INTERNAL") + target.handled("UNKNOWN") == internal_before
    assert not ESCAPE.exists(), "an archive member was written outside the job's working directory"


#: Requests per RPC when the sanity check below runs without the fuzz before it (e.g. selected alone with -k).
SANITY_EXAMPLES = 5


def test_zz_fuzz_reached_past_validation(
    fleet: dict[str, Running], seeds: dict[str, list], strategies: MessageStrategies
) -> None:
    """Sanity of the fuzz itself: most RPCs were answered OK at least once (the generated requests are not all junk).
    Runs after the fuzz (file order) and reads what it saw; RPCs the fuzz did not reach in this session (the test run
    alone, or with -k) are fuzzed here with a few examples first, so the check never has nothing to check."""
    for service, method in all_methods():
        if f"{service}.{method.name}" not in SEEN:
            _fuzz(fleet, seeds, strategies, service, method, SANITY_EXAMPLES)
    assert len(SEEN) == len(all_methods())
    for name, codes in sorted(SEEN.items()):
        print(f"{name:40s} {dict(codes)}")
    reached = [name for name, codes in SEEN.items() if codes.get("OK") or codes.get("CANCELLED")]
    assert len(reached) >= 0.75 * len(SEEN), f"only {sorted(reached)} ever succeeded"

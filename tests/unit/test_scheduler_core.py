"""Pure scheduler logic: progress parsing, memory sizing and placement, the state machine, offer ranking, spec checks.

No servers, no subprocesses: each function is checked against hand-computed values.
"""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from crucible.api.cost.v1 import offer_pb2
from crucible.api.scheduler.v1 import job_pb2
from crucible.runtime.errors import InvalidArgument, NotFound
from crucible.scheduler import jobspec
from crucible.scheduler.core import sizing
from crucible.scheduler.core.progress import ProgressTracker, progress_line
from crucible.scheduler.domain import states as st
from crucible.scheduler.jobstate import JobBookkeeping, JobRecord
from crucible.scheduler.logmirror import utf8_cut
from crucible.scheduler.pricing import Candidate, rank_offers
from crucible.scheduler.store import JobStore, decode_page_token, encode_page_token

GIB = 1 << 30


# --- progress ---------------------------------------------------------------------------------------------------


def test_nanogpt_iter_and_eval_lines() -> None:
    t = ProgressTracker()
    assert t.feed("iter 120: loss 2.3456, time 35.12ms, mfu 12.34%", 1.0)
    assert t.progress.step == 120
    assert t.progress.metrics == {"loss": 2.3456, "iter_time_ms": 35.12, "mfu_percent": 12.34}
    assert t.feed("step 250: train loss 1.9876, val loss 2.0123", 2.0)
    assert t.progress.step == 250
    assert t.progress.metrics["train_loss"] == 1.9876 and t.progress.metrics["val_loss"] == 2.0123
    assert t.progress.metrics["loss"] == 2.3456  # older metrics keep their latest value
    assert t.feed("iter 0: loss 4.1, time 1.0ms, mfu -100.00%", 3.0)
    assert t.progress.metrics["mfu_percent"] == -100.0


def test_epoch_lines_and_noise() -> None:
    t = ProgressTracker()
    assert not t.feed("loading data...", 0.0)
    assert not t.feed("", 0.0)
    assert t.feed("Epoch 3/10", 1.0)
    assert (t.progress.epoch, t.progress.total_epochs) == (3, 10)
    assert not t.feed("Epoch 11/10", 2.0)  # impossible: ignored
    assert t.progress.epoch == 3


def test_json_protocol_and_eta() -> None:
    t = ProgressTracker()
    assert t.feed(progress_line(10, 110, loss=2.5), 100.0)
    assert t.progress.step == 10 and t.progress.total_steps == 110 and t.progress.metrics == {"loss": 2.5}
    assert t.progress.eta_s is None  # one sample: no rate yet
    assert t.feed('{"crucible_progress": {"step": 20, "total_steps": 110, "loss": 2.0, "lr": 0.001, "tag": "x"}}', 110.0)
    assert t.progress.eta_s == pytest.approx(90.0)  # 10 steps per 10 s, 90 steps left
    assert "tag" not in t.progress.metrics and t.progress.metrics["lr"] == 0.001
    assert not t.feed('{"crucible_progress": [1, 2]}', 111.0)
    assert not t.feed('{"crucible_progress": {"step": 30', 111.0)  # truncated JSON
    assert t.progress.step == 20


def test_step_going_back_resets_the_rate() -> None:
    t = ProgressTracker()
    t.feed(progress_line(50, 100), 0.0)
    t.feed(progress_line(60, 100), 10.0)
    assert t.progress.eta_s == pytest.approx(40.0)
    t.feed(progress_line(40, 100), 20.0)  # resumed from an older checkpoint
    assert t.progress.step == 40 and t.progress.eta_s is None


# --- sizing -----------------------------------------------------------------------------------------------------


def test_gpt2_parameter_count_matches_a_direct_sum() -> None:
    shape = sizing.Shape(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304)
    e = 768
    per_layer = (2 * e) + (e * 3 * e + 3 * e) + (e * e + e) + (2 * e) + (e * 4 * e + 4 * e) + (4 * e * e + e)
    assert shape.parameter_count() == 50304 * e + 1024 * e + 12 * per_layer + 2 * e == 124_475_904


def test_training_estimate_arithmetic() -> None:
    est = sizing.estimate_requirements(
        parameter_count=None,
        shape=sizing.Shape(2, 2, 64, 32, 65),
        training=True,
        batch_size=4,
        block_size=0,
        precision="fp32",
        optimizer="adamw",
    )
    p = est.parameter_count
    assert est.weights_bytes == 4 * p and est.gradients_bytes == 4 * p and est.optimizer_state_bytes == 8 * p
    s, b, h, a = 32, 4, 64, 2
    per_layer = int(s * b * h * (34 + 5 * a * s / h) * 2)  # fp32 activations: twice the 16-bit rule
    assert est.activations_bytes == 2 * per_layer + b * s * 65 * 8
    assert est.total_bytes == est.weights_bytes + est.gradients_bytes + est.optimizer_state_bytes + est.activations_bytes
    assert any(line.startswith("weights:") for line in est.arithmetic)
    assert est.arithmetic[-1].startswith("total:")


def test_inference_estimate_and_precisions() -> None:
    est = sizing.estimate_requirements(
        parameter_count=7_000_000_000, shape=None, training=False, batch_size=1, block_size=2048, precision="int4", optimizer=None
    )
    assert est.weights_bytes == int(7e9 * (0.5 + 2 / 64))
    assert est.gradients_bytes == est.optimizer_state_bytes == 0
    layers, width, _rule = sizing.shape_from_parameters(7_000_000_000)
    assert (layers, width) == (33, 4211)
    assert est.activations_bytes == sizing.inference_activation_bytes(layers, width, 32000, 2048, 2)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"precision": "int8", "training": True}, "precision"),
        ({"precision": "mixed_bf16", "training": False}, "precision"),
        ({"optimizer": None}, "optimizer"),
        ({"batch_size": 0}, "batch_size"),
        ({"block_size": 0}, "block_size"),
        ({"parameter_count": 0}, "parameter_count"),
    ],
)
def test_estimate_rejects_bad_input(kwargs: dict, field: str) -> None:
    args = dict(parameter_count=1000, shape=None, training=True, batch_size=1, block_size=8, precision="fp32", optimizer="adamw")
    args.update(kwargs)
    with pytest.raises(InvalidArgument) as err:
        sizing.estimate_requirements(**args)
    assert err.value.field_violations[0][0] == field


def test_head_count_must_divide_width() -> None:
    with pytest.raises(InvalidArgument) as err:
        sizing.estimate_requirements(
            parameter_count=None,
            shape=sizing.Shape(2, 3, 64, 32, 65),
            training=False,
            batch_size=1,
            block_size=0,
            precision="fp32",
            optimizer=None,
        )
    assert err.value.field_violations[0][0] == "transformer.n_head"


SEED_MODELS = [
    sizing.ModelSpec("proposer", "int4", 70_000_000_000),
    sizing.ModelSpec("target", "int8", 8_000_000_000),
    sizing.ModelSpec("deberta", "fp16", 435_000_000),
]


def test_seed_case_does_not_fit_on_one_80gb_gpu() -> None:
    plan = sizing.plan_placement(
        SEED_MODELS, [sizing.DeviceSpec("cuda:0", "gpu", 80 * GIB)], parallel_requests=3, sequence_length=4096
    )
    assert not plan.fits
    gpu = plan.devices[0]
    assert gpu.used_bytes > gpu.usable_bytes == int(80 * GIB * 0.9)
    assert any("move target to cpu" in line for line in plan.explanation)


def test_seed_case_fits_with_the_target_on_cpu() -> None:
    models = [SEED_MODELS[0], sizing.ModelSpec("target", "int8", 8_000_000_000, pinned_device="cpu"), SEED_MODELS[2]]
    devices = [sizing.DeviceSpec("cuda:0", "gpu", 80 * GIB), sizing.DeviceSpec("cpu", "cpu", 128 * GIB)]
    plan = sizing.plan_placement(models, devices, parallel_requests=3, sequence_length=4096)
    assert plan.fits
    where = {a.model_name: a.device_names for a in plan.assignments}
    assert where == {"proposer": ["cuda:0"], "target": ["cpu"], "deberta": ["cuda:0"]}
    # Without the pin the planner finds the same placement by itself.
    free = sizing.plan_placement(SEED_MODELS, devices, parallel_requests=3, sequence_length=4096)
    assert free.fits and {a.model_name: a.device_names for a in free.assignments} == where


def test_sharding_and_data_parallel() -> None:
    big = sizing.ModelSpec("big", "fp16", 30_000_000_000, activation_bytes_per_request=GIB)
    gpus = [sizing.DeviceSpec(f"cuda:{i}", "gpu", 40 * GIB) for i in range(2)]
    plan = sizing.plan_placement([big], gpus)
    assert plan.fits and plan.assignments[0].strategy == "sharded"
    assert sum(d.used_bytes for d in plan.devices) == plan.assignments[0].total_bytes
    small = sizing.ModelSpec("small", "fp16", 1_000_000_000, activation_bytes_per_request=GIB)
    plan = sizing.plan_placement([small], gpus, parallel_requests=4)
    a = plan.assignments[0]
    assert plan.fits and a.strategy == "data_parallel" and a.device_names == ["cuda:0", "cuda:1"]
    assert a.activations_bytes == 2 * GIB  # 4 requests split over 2 copies


def test_placement_input_errors() -> None:
    gpu = [sizing.DeviceSpec("cuda:0", "gpu", GIB)]
    with pytest.raises(InvalidArgument) as err:
        sizing.plan_placement([sizing.ModelSpec("m", "fp16", 10, pinned_device="tpu")], gpu)
    assert err.value.field_violations[0][0] == "models[0].pinned_device"
    with pytest.raises(InvalidArgument) as err:
        sizing.plan_placement([sizing.ModelSpec("m", "fp16", 10), sizing.ModelSpec("m", "fp16", 10)], gpu)
    assert err.value.field_violations[0][0] == "models[1].name"
    with pytest.raises(InvalidArgument) as err:
        sizing.plan_placement([sizing.ModelSpec("m", "fp16", 10)], gpu, headroom_fraction=1.0)
    assert err.value.field_violations[0][0] == "headroom_fraction"


# --- states, ranking, specs, utf-8 -------------------------------------------------------------------------------


def test_state_machine() -> None:
    st.check_transition(st.PENDING, st.PROVISIONING)
    st.check_transition(st.RUNNING, st.RECOVERING)
    for terminal in st.TERMINAL:
        for to in range(1, 9):
            with pytest.raises(st.IllegalTransition):
                st.check_transition(terminal, to)
    with pytest.raises(st.IllegalTransition):
        st.check_transition(st.PENDING, st.RUNNING)


def _offer(provider: str, price: float, region: str = "r", spot: bool = False) -> offer_pb2.Offer:
    return offer_pb2.Offer(
        offer_id=f"{provider}/x/{region}/{'spot' if spot else 'on-demand'}",
        provider=provider,
        region=region,
        price_usd_per_hour=price,
        spot=spot,
        price_source="test catalog",
    )


def test_rank_offers_by_policy() -> None:
    cands = [
        Candidate(_offer("lambda", 2.0), 2.0, 1.0),
        Candidate(_offer("runpod", 1.0), 1.0, 0.5),
        Candidate(_offer("modal", 3.0), 3.0, 2.0),
        Candidate(_offer("runpod", 0.5, spot=True), 0.5, 0.5),
    ]
    spec = job_pb2.JobSpec(provider_policy=job_pb2.PROVIDER_POLICY_CHEAPEST)
    assert [c.provider for c in rank_offers(cands, spec)] == ["runpod", "lambda", "modal"]  # spot excluded
    spec.spot_allowed = True
    assert rank_offers(cands, spec)[0].offer.spot
    spec = job_pb2.JobSpec(provider_policy=job_pb2.PROVIDER_POLICY_FASTEST)
    assert rank_offers(cands, spec)[0].provider == "modal"
    spec = job_pb2.JobSpec(provider_policy=job_pb2.PROVIDER_POLICY_ORDERED, providers=["modal", "lambda"])
    assert [c.provider for c in rank_offers(cands, spec)] == ["modal", "lambda"]
    spec = job_pb2.JobSpec(provider_policy=job_pb2.PROVIDER_POLICY_CHEAPEST, max_price_usd_per_hour=1.5)
    assert [c.provider for c in rank_offers(cands, spec)] == ["runpod"]


def _spec(**kw) -> job_pb2.JobSpec:
    base = dict(command=["python", "train.py"], provider_policy=job_pb2.PROVIDER_POLICY_CHEAPEST)
    base.update(kw)
    return job_pb2.JobSpec(**base)


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
def test_spec_validation_names_the_field(spec: job_pb2.JobSpec, field: str) -> None:
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


def test_utf8_cut() -> None:
    text = "añ€😀".encode()
    assert utf8_cut(text) == len(text)
    assert utf8_cut(text[:-1]) == len(text) - 4
    assert utf8_cut(text[:2]) == 1  # 'a' then half of 'ñ'
    assert utf8_cut(b"\xff\xfe") == 2  # invalid bytes are not held back


# --- store --------------------------------------------------------------------------------------------------------


def test_store_roundtrip_and_pagination(tmp_path) -> None:
    store = JobStore(tmp_path / "s.db")
    for i in range(5):
        job = job_pb2.Job(job_id=f"j{i}", state=st.PENDING, provider="local")
        job.create_time.FromSeconds(1000 + i)
        store.insert(JobRecord(job, "sha", f"req{i}", JobBookkeeping.from_json({"n": i})))
    store.close()
    store = JobStore(tmp_path / "s.db")  # reopened: everything is there
    assert store.count() == 5
    assert store.by_request_id("req3").job.job_id == "j3"
    page = store.list(limit=2)
    assert [r.job.job_id for r in page] == ["j4", "j3"]
    token = encode_page_token(page[-1].seq)
    assert [r.job.job_id for r in store.list(limit=2, before_seq=decode_page_token(token))] == ["j2", "j1"]
    assert decode_page_token("garbage!") is None
    rec = store.get("j0")
    assert rec.bookkeeping.unknown == {"n": 0}  # keys of another version come back as they were
    rec.job.state = st.RUNNING
    store.update(rec)
    assert [r.job.job_id for r in store.list(states=[st.RUNNING])] == ["j0"]
    assert len(store.unfinished(tuple(st.TERMINAL))) == 5


def test_bookkeeping_reads_and_writes_the_stored_meta_format() -> None:
    """A `meta` column as earlier versions wrote it loads into the typed bookkeeping and is written back unchanged."""
    stored = {
        "candidates": [{"offer": "0a03612f62", "estimated_usd": 1.5}, {"offer": "", "estimated_usd": None}],
        "assumptions": ["on-demand"],
        "handles": {"1": {"provider": "local", "ref": "r1", "data": {"pid": 7}}},
        "log_starts": {"1": {"stdout": 0, "stderr": 0}, "2": {"stdout": 10, "stderr": 4}},
        "blocked_providers": ["lambda"],
        "blocked_locations": [["runpod", "EU"]],
        "restarts_used": 1,
        "recoveries": 2,
        "usage_until": {"1": 1700000000.5},
        "code_sha256": "ab" * 32,
        "code_bytes": 123,
        "cancel_reason": "cancelled: x",
        "stop_reason": "max_cost_usd $1.00 reached",
        "log_read": {"2": {"stdout": 99}},
        "log_capped": {"stdout": True},
        "log_dropped": {"stdout": 5},
        "uploaded": {"out.txt": [3, 1700000001.25]},
        "inputs_staged": 0,
        "inputs_local": True,
        "files_expired": True,
        "cancel_sent_2": True,
        "released_1": True,
        "collected_1": True,
        "collect_error_2": "store down",
        "collect_skipped_1": ["big.bin"],
        "from_a_later_version": {"x": 1},
    }
    book = JobBookkeeping.from_json(json.loads(json.dumps(stored)))
    assert book.handles[1].data == {"pid": 7} and book.log_starts[2] == {"stdout": 10, "stderr": 4}
    assert book.is_blocked("lambda", "any") and book.is_blocked("runpod", "EU") and not book.is_blocked("runpod", "US")
    assert book.cancel_sent == {2} and book.released == {1} and book.collected == {1}
    assert book.collect_errors == {2: "store down"} and book.collect_skipped == {1: ["big.bin"]}
    assert book.usage_until == {1: 1700000000.5} and book.log_capped == {"stdout"} and book.inputs_staged == 0
    assert book.candidates[0].offer().offer_id == "a/b" and book.candidates[1].estimated_usd is None
    assert book.to_json() == stored
    assert JobBookkeeping.from_json({}).cancel_text == "cancelled"


def test_eta_with_lines_read_in_batches() -> None:
    t = ProgressTracker()
    for step in range(50):
        t.feed(progress_line(step, 1000), 10.0)  # one log read: every line has the same time
    assert t.progress.eta_s is None
    for step in range(50, 100):
        t.feed(progress_line(step, 1000), 11.0)
    assert t.progress.eta_s == pytest.approx((1000 - 99) / 50.0)


async def test_group_commit_isolates_a_failing_insert(tmp_path) -> None:
    import asyncio
    import sqlite3

    from crucible.scheduler.store import AsyncJobStore

    store = AsyncJobStore(JobStore(tmp_path / "g.db"))
    recs = [JobRecord(job_pb2.Job(job_id=f"g{i}", state=st.PENDING), "sha", "same" if i in (3, 4) else f"r{i}") for i in range(8)]
    results = await asyncio.gather(*(store.insert(r) for r in recs), return_exceptions=True)
    failed = [i for i, r in enumerate(results) if isinstance(r, sqlite3.IntegrityError)]
    assert failed == [4]  # the second use of request id "same" fails alone
    assert store.sync.count() == 7
    await store.close()


# --- config ---------------------------------------------------------------------------------------------------------


def test_cost_channel_comes_from_the_schedulers_own_settings(tmp_path) -> None:
    """The cost address, token and TLS come from CRUCIBLE_SCHEDULER_* / flags, never from the SDK's CRUCIBLE_CLIENT_*."""
    from crucible.runtime.config import load_config
    from crucible.scheduler.config import SchedulerConfig

    client_env = {"CRUCIBLE_CLIENT_TOKEN": "sdk-token", "CRUCIBLE_CLIENT_TLS": "1"}
    shared = load_config(
        SchedulerConfig,
        "scheduler",
        env={**client_env, "CRUCIBLE_AUTH_TOKEN": "mesh-token", "CRUCIBLE_SCHEDULER_COST_ADDRESS": "127.0.0.1:1"},
    )
    channel = shared.cost_channel_config()
    assert channel.addresses == ("127.0.0.1:1",) and channel.token == "mesh-token" and not channel.tls
    assert channel.timeout_s == shared.cost_timeout_s
    token_file, ca_file = tmp_path / "token", tmp_path / "ca.pem"
    token_file.write_text("cost-token\n")
    ca_file.write_bytes(_self_signed_pem())
    own = load_config(
        SchedulerConfig,
        "scheduler",
        env={
            **client_env,
            "CRUCIBLE_SCHEDULER_COST_ADDRESS": "cost:50055",
            "CRUCIBLE_SCHEDULER_COST_TOKEN_FILE": str(token_file),
            "CRUCIBLE_SCHEDULER_COST_CA_FILE": str(ca_file),
            "CRUCIBLE_SCHEDULER_COST_TLS_SERVER_NAME": "cost.internal",
        },
    )
    channel = own.cost_channel_config()
    assert (channel.token, channel.tls, channel.root_certificates, channel.tls_server_name) == (
        "cost-token",
        True,
        ca_file.read_bytes(),
        "cost.internal",
    )
    assert load_config(SchedulerConfig, "scheduler", env={}).cost_channel_config().token == ""


def test_cost_token_file_is_read_like_the_auth_token_file(tmp_path) -> None:
    """An empty cost token file refuses the start naming it (it raised IndexError, then meant no token: issue 22);
    only the first line of a file is the token, and a CA file that is not PEM certificates is refused too."""
    from crucible.runtime.config import load_config
    from crucible.runtime.errors import ConfigError
    from crucible.scheduler.config import SchedulerConfig

    empty, multi, garbage = tmp_path / "empty", tmp_path / "multi", tmp_path / "ca.pem"
    empty.write_text("")
    multi.write_text("  first-line-token  \nsecond line\n")
    garbage.write_bytes(b"PEM")
    config = load_config(SchedulerConfig, "scheduler", env={"CRUCIBLE_SCHEDULER_COST_TOKEN_FILE": str(multi)})
    assert config.cost_channel_config().token == "first-line-token"
    for env, field in (
        ({"CRUCIBLE_SCHEDULER_COST_TOKEN_FILE": str(empty)}, "cost_token_file"),
        ({"CRUCIBLE_SCHEDULER_COST_CA_FILE": str(garbage)}, "cost_ca_file"),
    ):
        with pytest.raises(ConfigError) as err:
            load_config(SchedulerConfig, "scheduler", env=env)
        assert err.value.field == field


def _self_signed_pem() -> bytes:
    """A self-signed certificate in PEM (a CA bundle the scheduler's cost_ca_file check accepts)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cost.internal")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)

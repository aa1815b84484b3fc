"""End to end: GRPO on the real mesh — examples/grpo trains and resumes, runs as a local scheduler job with reward
progress in GetJob, and tinker-cookbook's rollout loop drives the Tinker environment against the same services.

Real embedded models (SmolLM2 policy and detector, MiniLM), tiny lengths and groups of 2 so CPU steps stay short.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from crucible.mesh import MeshLauncher as Launcher
from crucible.mesh import default_ports
from tests.conftest import free_port_block

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "grpo"
TINY = [
    "--num-generations",
    "2",
    "--prompts-per-step",
    "1",
    "--max-completion-length",
    "8",
    "--threads",
    "1",
    "--save-steps",
    "1",
    "--save-total-limit",
    "3",
]
COMPONENTS = (
    "reward_detector",
    "reward_similarity",
    "reward_fluency",
    "reward_repetition",
    "reward_language",
    "reward_length",
    "reward_copy",
    "reward_penalty",
)


@pytest.fixture(scope="module")
def mesh_env(tmp_path_factory):
    """Detector and proposer (the reward's services) on loopback; yields the CRUCIBLE_*_ADDRESS variables."""
    base = free_port_block(5)
    work = tmp_path_factory.mktemp("grpo-mesh")
    ports = default_ports(base)
    launcher = Launcher(
        ["detector", "proposer"], ports=ports, log_dir=work / "logs", env={"CRUCIBLE_STATE_DIR": str(work / "state")}
    )
    launcher.start()
    try:
        asyncio.run(launcher.wait_ready(timeout=240))
    except BaseException:
        launcher.stop()
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in (work / "logs").glob("*.log"))
        pytest.fail("mesh did not come up:\n" + logs)
    yield {f"CRUCIBLE_{name.upper()}_ADDRESS": f"127.0.0.1:{ports[name]}" for name in ("detector", "proposer")}
    launcher.stop()


def _progress(stdout: str) -> list[dict]:
    return [json.loads(line)["crucible_progress"] for line in stdout.splitlines() if line.startswith('{"crucible_progress"')]


def _train(out: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    run_env = {**os.environ, **env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(EXAMPLE / "train.py"), "--output-dir", str(out), *TINY, *extra],
        capture_output=True,
        text=True,
        timeout=900,
        env=run_env,
        cwd=EXAMPLE,
    )


def test_trains_two_steps_against_the_mesh_then_resumes_from_the_last_checkpoint(mesh_env, tmp_path):
    out = tmp_path / "run"
    first = _train(out, mesh_env, "--max-steps", "2")
    assert first.returncode == 0, first.stderr[-4000:]
    lines = _progress(first.stdout)
    assert [p["step"] for p in lines] == [1, 2] and all(p["total_steps"] == 2 for p in lines)
    for p in lines:
        assert {"loss", "reward_mean", "reward_std", "kl", *COMPONENTS} <= set(p)
        parts = sum(p[c] for c in COMPONENTS)
        assert parts == pytest.approx(p["reward_mean"], abs=1e-4)  # the components add up to the reward
    assert "seconds_per_step" in lines[1]
    assert (out / "checkpoint-2" / "trainer_state.json").is_file() and (out / "final").is_dir()

    # A preempted run's last checkpoint may be half-written: resume skips it and takes the last complete one.
    (out / "checkpoint-3").mkdir()
    (out / "checkpoint-3" / "trainer_state.json").write_text("{trunc")
    second = _train(out, mesh_env, "--max-steps", "3")
    assert second.returncode == 0, second.stderr[-4000:]
    assert f"resuming from {out / 'checkpoint-2'}" in second.stdout
    assert [p["step"] for p in _progress(second.stdout)] == [3]


async def test_runs_as_a_local_scheduler_job_with_reward_progress_in_get_job(mesh_env, tmp_path):
    from crucible.api.scheduler.v1 import job_pb2
    from crucible.api.scheduler.v1 import scheduler_service_pb2 as pb
    from crucible.api.scheduler.v1 import scheduler_service_pb2_grpc as pb_grpc
    from crucible.clients.scheduler import pack_code_dir
    from crucible.runtime.config import load_config
    from crucible.scheduler.config import SchedulerConfig
    from crucible.scheduler.server import create_server

    cfg = load_config(
        SchedulerConfig,
        "scheduler",
        env={},
        port=0,
        state_dir=str(tmp_path / "state"),
        poll_interval_s=0.2,
        metrics_enabled=False,
    )
    server, port = create_server(cfg)
    await server.start()
    await server.wait_ready(30)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.SchedulerServiceStub(ch)
            spec = job_pb2.JobSpec(
                command=[sys.executable, "train.py", "--max-steps", "2", *TINY],
                code_archive=pack_code_dir(EXAMPLE),
                provider_policy=job_pb2.PROVIDER_POLICY_EXPLICIT,
                providers=["local"],
                # CRUCIBLE_* names are the scheduler's own, so the mesh goes in as GRPO_MESH.
                env={
                    "GRPO_MESH": ",".join(
                        f"{k.removeprefix('CRUCIBLE_').removesuffix('_ADDRESS').lower()}={v}" for k, v in mesh_env.items()
                    ),
                    "OMP_NUM_THREADS": "1",
                    "HF_HUB_OFFLINE": "1",
                    "TRANSFORMERS_OFFLINE": "1",
                },
            )
            job = (await stub.CreateJob(pb.CreateJobRequest(spec=spec, request_id="grpo-e2e"))).job
            async for r in stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id)):
                done = r.job
            assert done.state == job_pb2.JOB_STATE_SUCCEEDED, done.transitions[-1].reason
            got = (await stub.GetJob(pb.GetJobRequest(job_id=job.job_id))).job
            p = got.progress
            assert p.step == 2 and p.total_steps == 2
            assert {"loss", "reward_mean", "reward_std", "kl", *COMPONENTS} <= set(p.metrics)
            arts = {a.path for a in (await stub.ListArtifacts(pb.ListArtifactsRequest(job_id=job.job_id))).artifacts}
            assert any(a.startswith("checkpoints/checkpoint-2/") for a in arts), sorted(arts)[:20]
    finally:
        await server.stop(0)


async def test_tinker_cookbook_rollout_scores_a_group_over_the_mesh(mesh_env):
    """The cookbook's own do_group_rollout runs our builder; the policy is the embedded SmolLM2 sampled locally."""
    import torch
    from tinker_cookbook.completers import TokenCompleter, TokensWithLogprobs
    from tinker_cookbook.rl.rollouts import do_group_rollout
    from transformers import AutoModelForCausalLM

    from crucible.clients.mesh import MeshConfig
    from crucible.clients.reward import RewardConfig
    from crucible.clients.tinker_env import ParaphraseGroupBuilder, load_tokenizer
    from crucible.models import resolve_model

    model = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2-135m-instruct", prepare=True).path)
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    torch.manual_seed(0)

    class LocalCompleter(TokenCompleter):
        async def __call__(self, model_input, stop, *, max_tokens=None):
            ids = torch.tensor([model_input.to_ints()])
            with torch.inference_mode():
                out = model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    do_sample=True,
                    max_new_tokens=12,
                    eos_token_id=list(stop),
                    pad_token_id=tokenizer.eos_token_id,
                )
            tokens = out[0, ids.shape[1] :].tolist()
            reason = "stop" if tokens and tokens[-1] in stop else "length"
            return TokensWithLogprobs(tokens=tokens, maybe_logprobs=[0.0] * len(tokens), stop_reason=reason)

    env = {k.removeprefix("CRUCIBLE_").removesuffix("_ADDRESS").lower(): {"address": v} for k, v in mesh_env.items()}
    builder = ParaphraseGroupBuilder(
        "The city council voted on Tuesday to expand the bike lane network across the downtown area next spring.",
        group_size=3,
        reward=RewardConfig(detector_signal="criterion"),
        mesh=MeshConfig.from_mapping(env),
    )
    group = await do_group_rollout(builder, LocalCompleter())
    assert len(group.trajectories_G) == 3 and len(group.final_rewards_G) == 3
    totals = group.get_total_rewards()
    assert totals == group.final_rewards_G  # per-step rewards are 0: the reward is the group's
    for metrics, total in zip(group.metrics_G, totals, strict=True):
        assert metrics["reward/total"] == pytest.approx(total)
        assert sum(v for k, v in metrics.items() if k.startswith("reward/") and k != "reward/total") == pytest.approx(total)
        assert 0.0 <= metrics["similarity"] <= 1.0
    assert "_live" not in builder.__dict__  # cleanup() closed the channels


def test_evade_eval_runs_against_the_mesh_for_base_and_a_lora_adapter(mesh_env, tmp_path):
    """`python -m crucible.clients.evade_eval` paraphrases 3 machine texts with the base model, with a LoRA adapter and
    with the mesh's proposer, scores them and 3 human texts over the mesh, and writes the side-by-side report."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from crucible.models import resolve_model

    base = resolve_model("smollm2-135m-instruct", prepare=True).path
    adapter = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    adapter.save_pretrained(str(tmp_path / "adapter"))
    human = [
        "I walked to the market this morning and the baker had already sold out of rye, so I settled for a sourdough "
        "loaf and a bag of apples from the stall by the fountain.",
        "My grandmother kept bees for forty years; she never wore gloves and said the bees knew her by the way she "
        "hummed when she lifted the lids of the hives.",
        "We missed the last bus home after the concert and ended up sharing a taxi with two strangers who turned out "
        "to live on our street.",
    ]
    machine = [
        "Regular physical activity offers numerous benefits, including improved cardiovascular health, enhanced mood, "
        "and better sleep quality, making it an essential component of a balanced lifestyle.",
        "The city council has approved a comprehensive plan to expand the downtown bike lane network, aiming to "
        "improve safety and encourage sustainable transportation options for residents.",
        "Artificial intelligence is transforming industries by automating routine tasks, enabling data-driven "
        "decisions, and creating new opportunities for innovation across many sectors of the economy.",
    ]
    (tmp_path / "human.txt").write_text("\n".join(human) + "\n")
    (tmp_path / "machine.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in machine))
    env = {**os.environ, **mesh_env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "eval"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "crucible.clients.evade_eval",
            "--human",
            str(tmp_path / "human.txt"),
            "--machine",
            str(tmp_path / "machine.jsonl"),
            "--policy",
            "base=smollm2-135m-instruct",
            "--policy",
            f"lora={tmp_path / 'adapter'}",
            "--policy",
            "mesh=proposer",
            "--max-new-tokens",
            "48",
            "--batch-size",
            "3",
            "--threads",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    names = [r["name"] for r in report["reports"]]
    assert names == ["original", "base", "lora", "mesh"] and report["human"] == 3 and report["machine"] == 3
    for r in report["reports"]:
        assert 0.0 <= r["auroc"] <= 1.0 and 0.0 <= r["tpr_at_1pct_fpr"] <= 1.0
        assert {"fast_detectgpt", "binoculars"} <= set(r["auroc_members"])
        assert 0.0 <= r["near_copy_share"] <= 1.0 and r["count"] == 3
    original = report["reports"][0]
    assert original["similarity"] > 0.99 and original["near_copy_share"] == 1.0  # the texts themselves
    assert len((out / "rewrites_base.jsonl").read_text().splitlines()) == 3
    assert "AUROC binoculars" in proc.stdout
    # the mesh's own paraphraser as a policy: its rewrites, recorded with the settings they were made with
    rows = [json.loads(line) for line in (out / "rewrites_mesh.jsonl").read_text().splitlines()]
    assert [r["original"] for r in rows] == machine and all(r["settings"]["policy"] == "proposer" for r in rows)
    assert all(r["rewrite"] != r["original"] for r in rows)

"""Valid requests for every RPC (the READMEs' grpcurl examples) with ids that exist on the running fleet.

The fuzz mutates them so generated requests get past the first checks; the auth tests send them without a token.
"""

from __future__ import annotations

import time

import grpc
from google.protobuf import json_format

from crucible.api.cost.v1 import budget_pb2, cost_service_pb2, cost_service_pb2_grpc
from crucible.api.scheduler.v1 import job_pb2, scheduler_service_pb2, scheduler_service_pb2_grpc
from tests.reliability.support import AUTH, Running, all_methods, request_class


def _wait_terminal(stub, job_id: str, timeout: float = 60) -> None:
    """Poll GetJob until the job is SUCCEEDED, FAILED or CANCELLED."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = stub.GetJob(scheduler_service_pb2.GetJobRequest(job_id=job_id), timeout=10, metadata=AUTH).job
        if job.state in (job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED):
            return
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish")


def valid_requests(job_id: str, budget_id: str, offer_id: str, deletable_job_id: str = "") -> dict[str, list[dict]]:
    """Requests each RPC accepts (the READMEs' grpcurl examples), as JSON, by method full name: the seeds mutated.
    DeleteJob's seed names a job of its own (`deletable_job_id`), so deleting it leaves the others' job alone."""
    s, c = "crucible.scheduler.v1.SchedulerService.", "crucible.cost.v1.CostService."
    text = ["The quick brown fox jumps over the lazy dog.", "Another plain sentence about the weather today."]
    return {
        "crucible.detector.v1.DetectorService.Detect": [
            {"texts": text, "members": ["MEMBER_FAST_DETECTGPT", "MEMBER_BINOCULARS"], "skip_cache": True}
        ],
        "crucible.detector.v1.DetectorService.DetectStream": [{"texts": text}],
        "crucible.detector.v1.DetectorService.GetInfo": [{}],
        "crucible.proposer.v1.ProposerService.Propose": [
            {"text": "How do vaccines work?", "mode": "PROPOSE_MODE_PARAPHRASE", "n": 2, "seed": 7},
            {
                "text": "Which gas do plants absorb for photosynthesis?",
                "mode": "PROPOSE_MODE_EQUIVALENT_QUESTION",
                "options": ["Oxygen", "Carbon dioxide", "Nitrogen", "Helium"],
                "correct_option_index": 1,
                "n": 2,
            },
        ],
        "crucible.proposer.v1.ProposerService.CheckEquivalence": [
            {
                "pairs": [{"first": "The vote was postponed.", "second": "They delayed the vote."}],
                "method": "EQUIVALENCE_METHOD_EMBEDDING_COSINE",
            },
            {
                "pairs": [{"first": "The vote was postponed.", "second": "They delayed the vote."}],
                "method": "EQUIVALENCE_METHOD_NLI_ENTAILMENT",
            },
        ],
        "crucible.proposer.v1.ProposerService.Embed": [{"texts": ["a sentence", "another one"]}],
        "crucible.proposer.v1.ProposerService.GetInfo": [{}],
        "crucible.scorer.v1.ScorerService.ScoreChoices": [
            {"items": [{"raw_prompt": "The capital of France is", "choices": [" Paris", " Rome"]}]},
            {
                "items": [
                    {
                        "question": {
                            "subject": "anatomy",
                            "question": "Which organ collects urine?",
                            "options": ["Bladder", "Kidney", "Ureter", "Urethra"],
                        }
                    }
                ]
            },
        ],
        "crucible.scorer.v1.ScorerService.ScoreTexts": [
            {
                "items": [
                    {"text": " Paris.", "prefix": "The capital of France is"},
                    {"text": "Colorless green ideas sleep furiously."},
                ]
            }
        ],
        "crucible.scorer.v1.ScorerService.GetInfo": [{}],
        s + "CreateJob": [
            {
                "spec": {
                    "command": ["echo", "hi"],
                    "provider_policy": "PROVIDER_POLICY_EXPLICIT",
                    "providers": ["dryrun"],
                    "max_duration": "60s",
                }
            }
        ],
        s + "GetJob": [{"job_id": job_id}],
        s + "ListJobs": [{"page_size": 10, "states": ["JOB_STATE_SUCCEEDED"]}],
        s + "CancelJob": [{"job_id": job_id, "reason": "fuzz"}],
        s + "WatchJob": [{"job_id": job_id}],
        s + "StreamJobLogs": [{"job_id": job_id, "follow": True}],
        s + "ListArtifacts": [{"job_id": job_id, "page_size": 5}],
        s + "DownloadArtifact": [{"job_id": job_id, "path": "result.txt"}],
        s + "EstimateRequirements": [
            {
                "transformer": {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024, "vocab_size": 50304},
                "workload": "WORKLOAD_KIND_TRAINING",
                "batch_size": 12,
                "precision": "PRECISION_MIXED_BF16",
                "optimizer": "OPTIMIZER_ADAMW",
            }
        ],
        s + "PlanPlacement": [
            {
                "models": [
                    {"name": "proposer", "parameter_count": 70000000000, "precision": "PRECISION_INT4"},
                    {"name": "target", "parameter_count": 8000000000, "precision": "PRECISION_INT8"},
                ],
                "devices": [{"name": "cuda:0", "kind": "DEVICE_KIND_GPU", "memory_bytes": 85899345920}],
                "parallel_requests": 3,
                "sequence_length": 4096,
            }
        ],
        s + "ListProviders": [{}],
        s + "ListJobProgress": [{"job_id": job_id, "page_size": 10}],
        s + "DeleteJobArtifacts": [{"job_id": job_id}],
        s + "DeleteJob": [{"job_id": deletable_job_id or job_id}],
        c + "ListOffers": [{"gpu_names": ["A100-80GB"], "max_price_usd_per_hour": 3}],
        c + "EstimateCost": [{"offer_id": offer_id, "duration": "3660s"}],
        c + "CompareProviders": [
            {
                "requirements": {"gpu_count": 1, "min_gpu_memory_gib": 40},
                "duration": "10800s",
                "reference_gpu_name": "A100-80GB",
                "objective": "OBJECTIVE_CHEAPEST",
            }
        ],
        c + "RefreshPrices": [{}],
        c + "CreateBudget": [
            {
                "budget": {
                    "scope": "user:alice",
                    "limit_usd": 20,
                    "enforcement": "BUDGET_ENFORCEMENT_HARD",
                    "alert_thresholds_percent": [50, 100],
                }
            }
        ],
        c + "GetBudget": [{"budget_id": budget_id}],
        c + "ListBudgets": [{"scope": "user:alice"}],
        c + "RecordUsage": [
            {
                "job_id": "j1",
                "offer_id": offer_id,
                "scope": "user:alice",
                "start_time": "2026-11-20T10:00:00Z",
                "end_time": "2026-11-20T11:00:00Z",
            }
        ],
        c + "WatchBudget": [{"budget_id": budget_id}],
        c + "CheckAdmission": [{"scope": "user:alice", "estimated_cost_usd": 1}],
    }


# Seeds that are valid requests but answer an error by design (a finished job cannot be cancelled, has no such file).
SEED_CODES = {
    "crucible.scheduler.v1.SchedulerService.CancelJob": grpc.StatusCode.FAILED_PRECONDITION,
    "crucible.scheduler.v1.SchedulerService.DownloadArtifact": grpc.StatusCode.NOT_FOUND,
}


def make_seeds(fleet: dict[str, Running]) -> dict[str, list]:
    """Valid requests per method full name (messages), with ids that exist on `fleet`: a finished dryrun job, a budget,
    a catalog offer."""
    with grpc.insecure_channel(fleet["scheduler"].address) as ch:
        stub = scheduler_service_pb2_grpc.SchedulerServiceStub(ch)
        job, deletable = (
            stub.CreateJob(
                scheduler_service_pb2.CreateJobRequest(
                    spec=job_pb2.JobSpec(
                        command=["echo", "hello"], provider_policy=job_pb2.PROVIDER_POLICY_EXPLICIT, providers=["dryrun"]
                    )
                ),
                timeout=30,
                metadata=AUTH,
            ).job
            for _ in range(2)
        )
        _wait_terminal(stub, job.job_id)
        _wait_terminal(stub, deletable.job_id)
    with grpc.insecure_channel(fleet["cost"].address) as ch:
        stub = cost_service_pb2_grpc.CostServiceStub(ch)
        budget = stub.CreateBudget(
            cost_service_pb2.CreateBudgetRequest(
                budget=budget_pb2.Budget(scope="user:alice", limit_usd=10.0, enforcement=budget_pb2.BUDGET_ENFORCEMENT_HARD)
            ),
            timeout=10,
            metadata=AUTH,
        ).budget
        offer = stub.ListOffers(cost_service_pb2.ListOffersRequest(gpu_names=["A10"]), timeout=10, metadata=AUTH).offers[0]
    methods = {m.full_name: m for _, m in all_methods()}
    return {
        name: [json_format.ParseDict(r, request_class(methods[name])()) for r in requests]
        for name, requests in valid_requests(job.job_id, budget.budget_id, offer.offer_id, deletable.job_id).items()
    }

"""The scheduler service: GPU jobs on local and remote providers with durable state, logs, progress and checkpoints.

Contract: protos/crucible/scheduler/v1/scheduler_service.proto (crucible.scheduler.v1.SchedulerService).
"""

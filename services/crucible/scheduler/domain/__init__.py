"""The scheduler's domain: job state as plain types and the pure decisions taken on it (no I/O, no protobuf).

`states` (the state table), `job` (the job as the decisions see it), `decide` (event in, new state and actions out).
"""

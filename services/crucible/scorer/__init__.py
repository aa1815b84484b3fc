"""The scorer service: target LLM pinned to CPU scoring answer choices and text likelihoods.

Contract: protos/crucible/scorer/v1/scorer_service.proto (crucible.scorer.v1.ScorerService).
"""

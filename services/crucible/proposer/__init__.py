"""The proposer service: instruction-LLM rewriting (paraphrases, equivalent questions), meaning checks and embeddings.

Contract: protos/crucible/proposer/v1/proposer_service.proto (crucible.proposer.v1.ProposerService).
"""

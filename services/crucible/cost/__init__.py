"""The cost service: gPU price catalog, cost estimates, provider comparison, budgets and spend.

Contract: protos/crucible/cost/v1/cost_service.proto (crucible.cost.v1.CostService).
"""

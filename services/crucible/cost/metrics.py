"""Prometheus metrics of the cost service: every budget's spend, limit and spend/limit ratio, read at scrape time.

The alert rules in deploy/prometheus/rules/alerts.yml read crucible_cost_budget_spent_ratio{budget_id, scope}.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from crucible.cost.budgets import BudgetStore

log = logging.getLogger(__name__)

_PAGE = 1000


class BudgetCollector(Collector):
    """Reads the budgets from the store on each scrape (a consistent snapshot; no state kept in the process)."""

    def __init__(self, store: BudgetStore) -> None:
        self._store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["budget_id", "scope", "enforcement"]
        spent = GaugeMetricFamily("crucible_cost_budget_spent_usd", "Spend recorded against the budget, USD.", labels=labels)
        limit = GaugeMetricFamily("crucible_cost_budget_limit_usd", "The budget's limit, USD.", labels=labels)
        ratio = GaugeMetricFamily(
            "crucible_cost_budget_spent_ratio", "Spend divided by the limit (1 = limit reached).", labels=labels
        )
        offset = 0
        try:
            while True:
                budgets, more = self._store.list_budgets("", offset, _PAGE)
                for b in budgets:
                    values = [b.budget_id, b.scope, b.enforcement.name.lower()]
                    spent.add_metric(values, b.spent_usd)
                    limit.add_metric(values, b.limit_usd)
                    ratio.add_metric(values, b.spent_usd / b.limit_usd if b.limit_usd > 0 else 0.0)
                if not more:
                    break
                offset += _PAGE
        except Exception:  # a scrape must never take the service down; the gap shows as missing samples
            log.exception("could not read budgets for metrics")
        yield spent
        yield limit
        yield ratio

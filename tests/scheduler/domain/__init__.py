"""Tests of the scheduler's pure domain: the state table and the decision function."""

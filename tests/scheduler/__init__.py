"""Tests of the scheduler service, laid out as services/crucible/scheduler is."""

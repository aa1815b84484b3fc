"""Tests of the scheduler's engine (the I/O that carries out decisions)."""

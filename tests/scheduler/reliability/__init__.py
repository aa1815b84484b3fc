"""Reliability tests of the scheduler: crashes, provider faults, hardening, the local sandbox."""

"""Tests of the job database and the stored record format."""

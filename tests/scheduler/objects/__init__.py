"""Tests of the object store and the job's files."""

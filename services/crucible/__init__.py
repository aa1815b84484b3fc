"""Crucible: a gRPC mesh serving detector, proposer, target-scorer, scheduler and cost services.

This package holds the shared server runtime, the model registry, the CLI and the five services.
"""

__version__ = "0.1.0"

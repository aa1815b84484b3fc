"""Compute providers of the scheduler: one adapter per backend behind the interface in base.py.

Adapters are looked up by name through the registry the scheduler core builds from its config.
"""

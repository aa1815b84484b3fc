"""Crucible client SDK: typed async clients for the five services.

Importable as `crucible.clients`; the generated stubs live in `crucible.api`.
"""

"""The servers' release, shown by `crucible --version` and logged at start (kept equal to pyproject.toml's version).

`crucible` is a namespace package shared with crucible-client, so it has no __init__.py to hold it.
"""

__version__ = "0.1.0"

"""The engine: carries out the decisions of `domain/decide.py` (launching, polling, logs, outputs, usage).

See the layout in services/crucible/scheduler/README.md.
"""

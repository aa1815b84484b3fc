"""The job database (SQLite) and the job folders: where a job's record and files live on this host.

See the layout in services/crucible/scheduler/README.md.
"""

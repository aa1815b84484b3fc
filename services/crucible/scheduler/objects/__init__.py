"""The object store (file:// or s3://) and the files a job reads and leaves: inputs, code, outputs.

See the layout in services/crucible/scheduler/README.md.
"""

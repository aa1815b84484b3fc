"""The web console: a browser front end of the mesh (providers, submit, jobs, job monitor, budgets) over the SDK.

`crucible console` serves it; `crucible up` starts it beside the services. See services/crucible/console/README.md.
"""

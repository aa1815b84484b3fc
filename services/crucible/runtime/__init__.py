"""The shared server runtime: config, errors, logging, the interceptor and the server lifecycle.

Every service builds its server through `crucible.runtime.server.create_server`; nothing here is copied per service.
"""

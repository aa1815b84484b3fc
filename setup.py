"""Package layout of the servers' distribution `crucible`: services/crucible/ installs into the `crucible` namespace.

services/ is the source root, so file paths match import names. The SDK and the generated code (`crucible.clients`,
`crucible.api`) are the separate distribution `crucible-client` in clients/, which this one depends on. `crucible` has
no __init__.py on either side: it is a namespace package both install into. Metadata is in pyproject.toml.
"""

from setuptools import find_namespace_packages, setup

# Namespace packages too, so data folders (console/static, cost/data, calibrations) are declared packages whose files
# package_data ships; with find_packages setuptools warns that each "would be ignored".
PACKAGES = find_namespace_packages(
    "services",
    include=["crucible", "crucible.*"],
    exclude=["crucible.api", "crucible.api.*", "crucible.clients*", "*__pycache__*"],
)

setup(
    package_dir={"": "services"},
    packages=PACKAGES,
    package_data={"crucible": ["py.typed", "**/*.json", "**/*.csv", "**/*.gz", "console/static/**/*"]},
)

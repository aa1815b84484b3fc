"""Package layout for setuptools: services/crucible/ installs as `crucible`, clients/crucible/clients/ as `crucible.clients`.

File paths match import names (services/ and clients/ are source roots); only the two roots live here, metadata is in
pyproject.toml.
"""

from setuptools import find_namespace_packages, setup

PACKAGE_DIR = {"crucible": "services/crucible", "crucible.clients": "clients/crucible/clients"}
# Namespace packages too, so data folders (console/static, cost/data, calibrations) are declared packages whose files
# package_data ships; with find_packages setuptools warns that each "would be ignored".
PACKAGES = [
    f"{root}.{sub}" if sub else root
    for root, folder in PACKAGE_DIR.items()
    for sub in ["", *find_namespace_packages(folder, exclude=["*__pycache__*"])]
]

setup(
    package_dir=PACKAGE_DIR,
    packages=PACKAGES,
    package_data={"crucible": ["py.typed", "**/*.pyi", "**/*.json", "**/*.csv", "**/*.gz", "console/static/**/*"]},
)

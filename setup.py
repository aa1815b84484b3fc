"""Package layout for setuptools: services/crucible/ installs as `crucible`, clients/crucible/clients/ as `crucible.clients`.

File paths match import names (services/ and clients/ are source roots); only the two roots live here, metadata is in
pyproject.toml.
"""

from setuptools import find_packages, setup

PACKAGE_DIR = {"crucible": "services/crucible", "crucible.clients": "clients/crucible/clients"}
PACKAGES = [f"{root}.{sub}" if sub else root for root, folder in PACKAGE_DIR.items() for sub in ["", *find_packages(folder)]]

setup(
    package_dir=PACKAGE_DIR,
    packages=PACKAGES,
    package_data={"crucible": ["py.typed", "**/*.pyi", "**/*.json", "**/*.csv", "**/*.gz", "console/static/**/*"]},
)

"""Package layout for setuptools: services/ installs as `crucible`, clients/ as `crucible.clients`.

Only the directory mapping lives here; all metadata is in pyproject.toml.
"""

from setuptools import find_packages, setup

PACKAGE_DIR = {"crucible": "services", "crucible.clients": "clients"}
PACKAGES = [
    f"{root}.{sub}" if sub else root
    for root, folder in PACKAGE_DIR.items()
    for sub in ["", *find_packages(folder)]
]

setup(package_dir=PACKAGE_DIR, packages=PACKAGES, package_data={"crucible": ["py.typed", "**/*.pyi", "**/*.json", "**/*.csv", "**/*.gz",
                                                                             "console/static/**/*"]})

"""Package layout of crucible-client: clients/crucible/clients is `crucible.clients`, clients/crucible/api `crucible.api`.

`crucible` stays a namespace package shared with the servers' distribution; metadata is in pyproject.toml.
"""

from pathlib import Path

from setuptools import find_namespace_packages, setup

HERE = Path(__file__).resolve().parent
if not (HERE / "crucible" / "api" / "__init__.py").is_file():
    raise SystemExit(
        "clients/crucible/api/ (the generated gRPC code) is missing: run `make proto` (or python services/crucible/protogen.py "
        "with grpcio-tools and mypy-protobuf installed) in the repository first"
    )

setup(
    package_dir={"": "."},
    packages=find_namespace_packages(
        ".", include=["crucible.clients", "crucible.clients.*", "crucible.api", "crucible.api.*"], exclude=["*__pycache__*"]
    ),
    package_data={"crucible.clients": ["py.typed"], "crucible.api": ["py.typed", "**/*.pyi"]},
)

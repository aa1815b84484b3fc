"""Fixtures of the deployment tests: the rendered kustomize overlays (built once per session).

Helpers live in tests/deploy/support.py.
"""

from __future__ import annotations

import pytest

from tests.deploy.support import OVERLAYS, kustomize, load_documents


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict]]:
    """Each overlay's rendered resources, by overlay name (dev, prod)."""
    return {overlay.name: load_documents(kustomize(overlay)) for overlay in OVERLAYS}

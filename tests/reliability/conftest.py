"""Fixtures of the reliability suite: the five services in process, with tiny models and auth on, for the whole package.

They run on a background loop thread (support.LoopThread) so synchronous hypothesis tests can call them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.support import TOKEN, LoopThread, Running, service_settings, start_service, tiny_model_folders


@pytest.fixture(scope="package")
def model_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random models saved as local folders (built once for the package)."""
    return tiny_model_folders(tmp_path_factory.mktemp("reliability-models"))


@pytest.fixture(scope="package")
def fleet(model_folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Running]]:
    """detector, proposer, scorer, scheduler and cost servers on port 0, auth token TOKEN, tiny models, small limits."""
    state = tmp_path_factory.mktemp("reliability-state")
    loop = LoopThread()
    running: dict[str, Running] = {}
    try:
        for name in ("detector", "proposer", "scorer", "scheduler", "cost"):
            settings = {**service_settings(name, model_folders, state), "auth_token": TOKEN}
            running[name] = loop.run(start_service(name, settings), timeout=300)
        yield running
    finally:
        for r in running.values():
            loop.run(r.server.stop(0), timeout=60)
        loop.close()


@pytest.fixture(scope="package")
def seeds(fleet: dict[str, Running]) -> dict[str, list]:
    """A valid request (or several) for every RPC, by method full name, with ids that exist on the fleet."""
    from tests.reliability.seeds import make_seeds

    return make_seeds(fleet)

"""A whole `make run` stack shared by the tests that check deploy/ and scripts/ against it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.environment import canary
from tests.services import Stack


@pytest.fixture(scope="session")
def running_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Started once, healthy before any test uses it; a test that stops a part restarts it.

    It requires a monitoring API key, so everything that reads its endpoints must send it.
    """
    directory = tmp_path_factory.mktemp("stack")
    key = canary("stackmonitoring")
    stack = Stack(directory / "var", directory / "stack.log", MONITORING_API_KEY=key)
    try:
        stack.wait_healthy()
        yield stack
    finally:
        stack.stop(timeout=20)

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import structlog
from support import RedisClusterProcess, RedisProcess, Running, running


@pytest.fixture
async def srv() -> AsyncIterator[Running]:
    """A real pairline server (embedded store, fake clock) on an ephemeral port."""
    async with running() as r:
        yield r


@pytest.fixture(autouse=True)
def _suite_logging() -> Iterator[None]:
    """Each test starts and ends with the suite's logging: a test that runs a command
    in process (``pairline simulate`` configures warning-level logs to the stderr of
    that test, which pytest then closes) must not leave it to the next tests."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    """A redis-server of the suite's own, stopped after the session."""
    proc = RedisProcess()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterProcess]:
    """A 3-master Redis Cluster of the suite's own, stopped after the session."""
    cluster = RedisClusterProcess()
    try:
        yield cluster
    finally:
        cluster.stop()


def pytest_configure(config: pytest.Config) -> None:
    """Logs as the server writes them (JSON, info and up), so debug noise stays out."""
    from pairline.logs import configure

    configure("info", json=True, cache=False)

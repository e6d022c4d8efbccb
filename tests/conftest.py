from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from support import RedisClusterProcess, RedisProcess, Running, running


@pytest.fixture
async def srv() -> AsyncIterator[Running]:
    """A real pairline server (embedded store, fake clock) on an ephemeral port."""
    async with running() as r:
        yield r


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

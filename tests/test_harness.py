"""The suite's own services: the Redis that `make test` provides is started by the
suite itself, on a free port, never the machine's shared one."""

from __future__ import annotations

import redis.asyncio as aioredis
from support import RedisProcess


class TestRedisHarness:
    async def test_own_redis_answers(self, redis_server: RedisProcess) -> None:
        """The session's redis-server is ours (our port, our child process) and works."""
        assert redis_server.port != 6379
        assert redis_server.proc.poll() is None
        client = aioredis.from_url(redis_server.url)
        try:
            assert await client.ping()
            await client.set("pairline:harness", b"ok", ex=5)
            assert await client.get("pairline:harness") == b"ok"
            info = await client.info("server")
            assert info["tcp_port"] == redis_server.port
        finally:
            await client.aclose()

    def test_stop_leaves_nothing_running(self) -> None:
        """A stopped RedisProcess has exited and removed its directory."""
        import os

        proc = RedisProcess()
        proc.stop()
        assert proc.proc.poll() is not None
        assert not os.path.exists(proc.dir)

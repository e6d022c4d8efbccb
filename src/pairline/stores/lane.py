"""A lean connection to one Redis for the routing hot path.

redis-py's asyncio client costs about 40-50 µs of CPU per call here (its Python
command packer, a task per socket write for the write timeout, the connection
pool and its observability hooks): on the claim path that is more than the
decision itself. A :class:`Lane` is one socket of its own: commands are packed by
hiredis (C), written without awaiting, and replies parsed by hiredis and handed
to the callers in order, so several calls may be in flight at once (pipelined).
It raises redis-py's exceptions (``ConnectionError``, ``TimeoutError``,
``ResponseError``), so callers treat it like the client.

Used for a single Redis over TCP or a Unix socket; TLS and Redis Cluster go
through redis-py (:func:`Lane.for_client` returns None for them).
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["Lane"]


def _reply_error(message: str) -> Exception:
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    return ResponseError(message)


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader(replyError=_reply_error)
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        # The loop-time deadline of each call in ``waiting`` (same order), and the
        # one timer that watches them all (see :meth:`watch`).
        self.deadlines: collections.deque[float] = collections.deque()
        self.timer: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.error: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiting, deadlines = self.waiting, self.deadlines
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self.fail(RedisConnectionError(f"protocol error from Redis: {exc}"))
                return
            if reply is False:
                return
            if not waiting:  # nothing asked for it: the stream is out of step
                self.fail(RedisConnectionError("unexpected reply from Redis"))
                return
            fut = waiting.popleft()
            deadlines.popleft()
            if not fut.done():  # (a caller that gave up leaves its place in line)
                fut.set_result(reply)

    def send(self, packed: bytes, deadline: float) -> asyncio.Future[Any]:
        """Write one packed command; its reply will be the result of the future
        returned (the connection fails when it has not come by ``deadline``, loop
        time)."""
        assert self.transport is not None
        fut = self.loop.create_future()
        self.waiting.append(fut)
        self.deadlines.append(deadline)
        self.transport.write(packed)
        timer = self.timer
        if timer is None or deadline < timer.when():
            if timer is not None:  # (a call with a shorter timeout than those before)
                timer.cancel()
            self.timer = self.loop.call_at(deadline, self.watch)
        return fut

    def watch(self) -> None:
        """The timer of the calls in flight. One timer for all of them instead of one
        per call (arming and cancelling a timer per call costs more than the rest of
        the call's bookkeeping): when it fires, a call past its deadline without a
        reply fails the connection (the reply may still come: the stream is out of
        step, drop it); otherwise it is armed again for the earliest deadline left."""
        self.timer = None
        if self.closed or not self.waiting:
            return
        loop = self.loop
        now = loop.time()
        earliest = None
        for fut, deadline in zip(self.waiting, self.deadlines, strict=True):
            if fut.done():
                continue  # (a caller that gave up)
            if deadline <= now:
                self.fail(RedisTimeoutError("Timeout reading from Redis"))
                return
            if earliest is None or deadline < earliest:
                earliest = deadline
        if earliest is not None:
            self.timer = loop.call_at(earliest, self.watch)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}"))

    def fail(self, error: Exception) -> None:
        """Close for good and fail every call in flight with ``error``."""
        if not self.closed:
            self.closed = True
            self.error = error
            if self.transport is not None:
                self.transport.abort()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.deadlines.clear()
        while self.waiting:
            fut = self.waiting.popleft()
            if not fut.done():
                fut.set_exception(error)


class Lane:
    """One pipelined connection to a single Redis (see the module docstring)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 6379,
        path: str | None = None,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = 0.5,
    ) -> None:
        self.host, self.port, self.path = host, port, path
        self.db, self.username, self.password = db, username, password
        self.timeout_s = timeout_s
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    @classmethod
    def for_client(cls, client: Any, timeout_s: float) -> Lane | None:
        """A lane to the Redis that redis-py ``client`` talks to, or None when it is a
        cluster or uses TLS (those stay on redis-py)."""
        from redis.asyncio.connection import Connection, UnixDomainSocketConnection

        pool = getattr(client, "connection_pool", None)
        if pool is None or pool.connection_class not in (Connection,
                                                         UnixDomainSocketConnection):
            return None
        kw = pool.connection_kwargs
        return cls(host=kw.get("host", "127.0.0.1"), port=int(kw.get("port", 6379)),
                   path=kw.get("path"), db=int(kw.get("db") or 0),
                   username=kw.get("username"), password=kw.get("password"),
                   timeout_s=timeout_s)

    async def _connect(self) -> _Protocol:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            proto = self._proto
            if proto is not None and not proto.closed:
                return proto
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(self.timeout_s):
                    if self.path:
                        _, proto = await loop.create_unix_connection(_Protocol, self.path)
                    else:
                        _, proto = await loop.create_connection(_Protocol, self.host, self.port)
            except (OSError, TimeoutError) as exc:
                raise RedisConnectionError(f"cannot connect to Redis: {exc!r}") from exc
            self._proto = proto
            hello: list[tuple[Any, ...]] = []
            if self.password:
                hello.append(("AUTH", self.username, self.password) if self.username
                             else ("AUTH", self.password))
            if self.db:
                hello.append(("SELECT", self.db))
            for cmd in hello:
                reply = await proto.send(hiredis.pack_command(cmd),
                                         proto.loop.time() + self.timeout_s)
                if isinstance(reply, Exception):
                    proto.fail(RedisConnectionError(f"Redis refused {cmd[0]}: {reply}"))
                    raise reply
            return proto

    async def call(self, *args: Any, timeout_s: float | None = None) -> Any:
        """Send one command and return its reply (bytes, ints, lists as hiredis
        gives them); an error reply is raised as ``ResponseError``."""
        proto = self._proto
        if proto is None or proto.closed:
            proto = await self._connect()
        reply = await proto.send(
            hiredis.pack_command(args),
            proto.loop.time() + (self.timeout_s if timeout_s is None else timeout_s))
        if isinstance(reply, Exception):
            raise reply
        return reply

    def close(self) -> None:
        proto, self._proto = self._proto, None
        if proto is not None:
            proto.fail(RedisConnectionError("lane closed"))

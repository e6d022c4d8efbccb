"""A message that does not parse in the middle of a client stream, through a real
server: UpsertCustomerProfiles names the batch and says what was applied before it
(profiles.proto), like any other invalid batch."""

from __future__ import annotations

import grpc
import pytest
from support import Running, error_field, running

from pairline._proto.pairline.v1 import profiles_pb2 as ppb

GARBAGE = b"\xff\xff\xff"


def batch(*keys: str) -> bytes:
    return ppb.CustomerProfileBatch(
        profiles=[
            ppb.CustomerProfile(customer_key=k, vector=[0.1] * 4, version=1, source_time_ms=1)
            for k in keys
        ]
    ).SerializeToString()


async def upsert_raw(srv: Running, messages: list[bytes]) -> grpc.aio.AioRpcError:
    """The stream of raw messages (as a broken client sends them); its error."""
    call = srv.channel.stream_unary(
        "/pairline.v1.Profiles/UpsertCustomerProfiles",
        request_serializer=lambda b: b,
        response_deserializer=ppb.UpsertResult.FromString,
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(iter(messages), metadata=srv.acme.metadata, timeout=10)
    return err.value


async def stored(srv: Running, key: str) -> bool:
    digest = srv.server.service.privacy.tenants["acme"].keys.digest(key)
    row = await srv.server.store.get_customer_profile("acme", digest, srv.clock.now())
    return row is not None


class TestMalformedBatch:
    async def test_after_applied_batches(self) -> None:
        """A batch that does not parse after two good ones: INVALID_ARGUMENT naming
        batches[2], saying 2 earlier batches and 3 profiles were applied (they stay)."""
        async with running() as srv:
            err = await upsert_raw(srv, [batch("k1", "k2"), batch("k3"), GARBAGE, batch("k4")])
            assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert error_field(err) == "batches[2]"
            details = err.details() or ""
            assert "not a valid pairline.v1.CustomerProfileBatch message" in details
            assert "2 earlier batch(es), 3 profile(s) applied" in details
            applied = [await stored(srv, k) for k in ("k1", "k2", "k3", "k4")]
            assert applied == [True, True, True, False]

    async def test_first_batch(self) -> None:
        """The first message does not parse: batches[0], nothing applied."""
        async with running() as srv:
            err = await upsert_raw(srv, [GARBAGE, batch("k1")])
            assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert error_field(err) == "batches[0]"
            assert "0 earlier batch(es), 0 profile(s) applied" in (err.details() or "")
            assert not await stored(srv, "k1")

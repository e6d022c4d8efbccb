"""The floor for test_grpc_bench.py: a bare grpc.aio server on the same protos that
does nothing. RouteContact answers a prebuilt Decision of the size pairline's are
(with the request's contact id), Connect and ConnectBatch answer every event with
one, and Health/Check says SERVING. No auth, limits, metrics, logging or routing.

What the benchmarks measure against it is what grpc.aio and the Python client
cost on this machine by themselves: no RouteContact on this server can be faster
than here. Run by the benchmarks; by hand:

    .venv/bin/python benchmarks/floor_server.py 127.0.0.1:50099
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from pairline._proto.pairline.v1 import common_pb2 as cpb
from pairline._proto.pairline.v1 import router_pb2 as rpb
from pairline._proto.pairline.v1 import router_pb2_grpc as rpb_grpc


def _decision(contact_id: str) -> cpb.Decision:
    """A decision with the fields and sizes pairline fills for a PAIRED greedy route."""
    now_ms = int(time.time() * 1000)
    return cpb.Decision(
        decision_id="d78e19485c5ba-133b", mode=cpb.MODE_PAIRED, contact_id=contact_id,
        agent_id="a4119", queue="q", channel=cpb.CHANNEL_CHAT, policy="greedy",
        model_version="bench", predicted_outcome=0.5123, offer_expires_at_ms=now_ms + 3_600_000,
        decided_at_ms=now_ms)


def _reply(event: rpb.SwitchEvent) -> rpb.SwitchReply:
    return rpb.SwitchReply(request_id=event.request_id,
                           decision=_decision(event.route_contact.contact_id))


class Floor(rpb_grpc.RouterServicer):
    async def RouteContact(self, request: rpb.RouteContactRequest, context: Any) -> cpb.Decision:
        return _decision(request.contact_id)

    async def Connect(self, requests: AsyncIterator[rpb.SwitchEvent],
                      context: Any) -> AsyncIterator[rpb.SwitchReply]:
        async for event in requests:
            yield _reply(event)

    async def ConnectBatch(self, requests: AsyncIterator[rpb.SwitchEventBatch],
                           context: Any) -> AsyncIterator[rpb.SwitchReplyBatch]:
        async for batch in requests:
            yield rpb.SwitchReplyBatch(replies=[_reply(e) for e in batch.events])


async def serve(address: str) -> None:
    server = grpc.aio.server()
    rpb_grpc.add_RouterServicer_to_server(Floor(), server)
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    await checker.set("", health_pb2.HealthCheckResponse.SERVING)
    server.add_insecure_port(address)
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))

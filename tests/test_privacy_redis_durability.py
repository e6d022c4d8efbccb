"""An acknowledged privacy record survives SIGKILL of Redis (the suite's Redis runs
with appendonly yes and appendfsync always, as the README says production must),
and SIGKILL of every server: a new server on the restarted Redis honours it."""

from __future__ import annotations

import asyncio
import dataclasses

from support import RedisProcess, contact, login, running, settings

from pairline._proto.pairline.v1 import common_pb2 as cpb
from pairline._proto.pairline.v1 import privacy_pb2 as xpb


async def test_opt_out_and_deletion_survive_sigkill_of_redis() -> None:
    own = RedisProcess()
    try:
        cfg = dataclasses.replace(settings(), redis_url=own.url, deletion_interval_s=0.0)
        async with running(cfg) as srv:
            a = srv.acme
            await a.privacy.OptOut(xpb.OptOutRequest(customer_key="+15550142"))
            ticket = await a.privacy.RequestDeletion(
                xpb.RequestDeletionRequest(customer_key="+15550143"))
            own.kill()  # right after both were acknowledged
        own.start()  # same port, same append-only file
        async with running(cfg) as srv:
            a = srv.acme
            await a.router.SetAgentState(login("a1", "sales"))
            d = await a.router.RouteContact(contact("c1", customer_key="+15550142"))
            assert d.mode == cpb.MODE_OPTED_OUT
            t = await a.privacy.GetDeletion(xpb.GetDeletionRequest(ticket_id=ticket.ticket_id))
            assert t.ticket_id == ticket.ticket_id and t.received_at_ms == ticket.received_at_ms
            audit = await a.privacy.ReadAudit(xpb.ReadAuditRequest())
            ops = [e.op for e in audit.entries]
            assert "opt_out" in ops and "deletion_received" in ops
            await asyncio.sleep(0)
    finally:
        own.stop()

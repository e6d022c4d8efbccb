"""The Privacy servicer (thin: decode and validate, call
:class:`pairline.privacy_service.Privacy`, encode) and its wire conversions.

Kept apart from :mod:`pairline.servicers` and :mod:`pairline.convert` so the
privacy contract evolves on its own. Every bad input is INVALID_ARGUMENT naming
its field, before anything changes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from pairline._proto.pairline.v1 import privacy_pb2 as xpb
from pairline._proto.pairline.v1 import privacy_pb2_grpc as xpb_grpc
from pairline.convert import MAX_KEY, text
from pairline.errors import InvalidArgument
from pairline.interceptors import current_tenant
from pairline.privacy_service import MAX_BULK_KEYS, MAX_PAGE, Privacy
from pairline.stores.privacy import AuditEntry, Ticket

Ctx = grpc.aio.ServicerContext[Any, Any]
MAX_KEYS_PER_MESSAGE = 10_000
MAX_DUE_WITHIN_DAYS = 3650


def customer_key(value: str, field: str = "customer_key") -> str:
    return text(value, field, max_len=MAX_KEY)


def page_size(value: int) -> int:
    if not 0 <= value <= MAX_PAGE:
        raise InvalidArgument("page_size", f"must be in 0..{MAX_PAGE}, got {value}")
    return value


def ticket(t: Ticket, now_ms: int) -> xpb.DeletionTicket:
    return xpb.DeletionTicket(
        ticket_id=t.ticket_id,
        customer_digest=t.digest,
        status=int(t.status),  # type: ignore[arg-type]
        received_at_ms=t.received_at_ms,
        due_at_ms=t.due_at_ms,
        completed_at_ms=t.completed_at_ms,
        overdue=t.overdue(now_ms),
        step=t.step,
    )


def audit_entry(a: AuditEntry) -> xpb.AuditEntry:
    return xpb.AuditEntry(seq=a.seq, at_ms=a.at_ms, op=a.op, customer_digest=a.digest,
                          ticket_id=a.ticket_id, detail=a.detail)


class PrivacyServicer(xpb_grpc.PrivacyServicer):
    def __init__(self, privacy: Privacy) -> None:
        self._p = privacy

    def _now_ms(self) -> int:
        return round(self._p.clock.now() * 1000)

    async def _opt(self, request: xpb.OptOutRequest, on: bool) -> xpb.OptOutResponse:
        key = customer_key(request.customer_key)
        out = await self._p.opt_out(current_tenant(), key, on)
        return xpb.OptOutResponse(customer_digest=out.digest,
                                  effective_at_ms=out.effective_at_ms, changed=out.changed)

    async def OptOut(self, request: xpb.OptOutRequest, context: Ctx) -> xpb.OptOutResponse:
        return await self._opt(request, True)

    async def WithdrawOptOut(
        self, request: xpb.OptOutRequest, context: Ctx
    ) -> xpb.OptOutResponse:
        return await self._opt(request, False)

    async def BulkOptOut(
        self, request_iterator: AsyncIterator[xpb.BulkOptOutRequest], context: Ctx
    ) -> xpb.BulkOptOutResponse:
        tenant = current_tenant()
        keys: list[str] = []
        replace: bool | None = None
        n = 0
        async for msg in request_iterator:
            at = f"requests[{n}]."
            if not msg.customer_keys:
                raise InvalidArgument(f"{at}customer_keys", "at least one key per message")
            if len(msg.customer_keys) > MAX_KEYS_PER_MESSAGE:
                raise InvalidArgument(f"{at}customer_keys",
                                      f"at most {MAX_KEYS_PER_MESSAGE} keys per message")
            if replace is None:
                replace = msg.replace
            elif msg.replace and not replace:
                raise InvalidArgument(f"{at}replace", "may only be set on the first message")
            for i, k in enumerate(msg.customer_keys):
                keys.append(customer_key(k, f"{at}customer_keys[{i}]"))
            if len(keys) > MAX_BULK_KEYS:
                raise InvalidArgument(f"{at}customer_keys",
                                      f"at most {MAX_BULK_KEYS} keys per call")
            n += 1
        if not keys:
            raise InvalidArgument("customer_keys", "the call sent no keys")
        out = await self._p.bulk_opt_out(tenant, keys, bool(replace))
        return xpb.BulkOptOutResponse(received=out.received, opted_out=out.opted_out,
                                      already_opted_out=out.already, withdrawn=out.withdrawn,
                                      effective_at_ms=out.effective_at_ms)

    async def RequestDeletion(
        self, request: xpb.RequestDeletionRequest, context: Ctx
    ) -> xpb.DeletionTicket:
        key = customer_key(request.customer_key)
        return ticket(await self._p.request_deletion(current_tenant(), key), self._now_ms())

    async def GetDeletion(
        self, request: xpb.GetDeletionRequest, context: Ctx
    ) -> xpb.DeletionTicket:
        ticket_id = text(request.ticket_id, "ticket_id")
        return ticket(await self._p.get_deletion(current_tenant(), ticket_id), self._now_ms())

    async def ListDeletions(
        self, request: xpb.ListDeletionsRequest, context: Ctx
    ) -> xpb.ListDeletionsResponse:
        size = page_size(request.page_size)
        token = text(request.page_token, "page_token", required=False)
        days = request.due_within_days
        if not 0 <= days <= MAX_DUE_WITHIN_DAYS:
            raise InvalidArgument("due_within_days",
                                  f"must be in 0..{MAX_DUE_WITHIN_DAYS}, got {days}")
        page = await self._p.list_deletions(current_tenant(), request.overdue_only, days,
                                            size, token)
        now_ms = self._now_ms()
        return xpb.ListDeletionsResponse(
            tickets=[ticket(t, now_ms) for t in page.tickets],
            next_page_token=page.next_token, open=page.open, overdue=page.overdue,
        )

    async def ReadAudit(
        self, request: xpb.ReadAuditRequest, context: Ctx
    ) -> xpb.ReadAuditResponse:
        if request.after_seq < 0:
            raise InvalidArgument("after_seq", "must be >= 0")
        size = page_size(request.page_size)
        entries = await self._p.read_audit(current_tenant(), request.after_seq, size)
        return xpb.ReadAuditResponse(
            entries=[audit_entry(a) for a in entries],
            next_after_seq=entries[-1].seq if entries else request.after_seq,
        )

"""ON/OFF labels of contact-surplus decisions when the agent serves several queues:
a decision is counted on the side of its own queue's slot, never another's."""

from __future__ import annotations

from support import contact, login, running, settings
from test_pairing import setup_pairing

from pairline._proto.pairline.v1 import common_pb2 as cpb
from pairline._proto.pairline.v1 import router_pb2 as rpb
from pairline.benchmark import SlotSchedule

SLOT, STABILISE = 60.0, 5.0


def _moment(secret: str, first: str, second: str, want: tuple[bool, bool]) -> float:
    """A time (mid-slot) when ``first`` is ON and counted and ``second`` is ``want``."""
    sched = SlotSchedule(secret, SLOT, 0.5, STABILISE)
    t = 1_800_000_030.0
    while not (sched.state(first, t) == (True, True) and sched.state(second, t) == want):
        t += SLOT
    return t


class TestSlotOfTheChosenContact:
    async def _ready_with_two_waiting(self, want: tuple[bool, bool]) -> tuple[cpb.Decision, float]:
        """An agent of sales and support frees up with an old, poorly matched sales
        contact and a newer, well matched support contact waiting."""
        cfg = settings(policy="greedy", benchmark=True, slot_s=SLOT, on_share=0.5,
                       stabilise_s=STABILISE)
        t = _moment(cfg.tenants[0].secret, "sales", "support", want)
        async with running(cfg) as srv:
            await setup_pairing(srv, {"ag": [1, 0, 0]},
                                {"+low": [0, 0, 0, 0], "+high": [1, 0, 0, 0]})
            r = srv.acme.router
            srv.clock.t = t - 2
            await r.SetAgentState(login("ag", "sales", "support",
                                        status=rpb.AGENT_STATUS_AWAY))
            await r.RouteContact(contact("old-sales", "sales", customer_key="+low"))
            srv.clock.t = t - 1
            await r.RouteContact(contact("new-support", "support", customer_key="+high"))
            srv.clock.t = t
            d = await r.AgentReady(rpb.AgentReadyRequest(agent_id="ag"))
            rec = await srv.server.service.store.get_decision("acme", d.decision_id, t)
            assert rec is not None
            assert (rec.decision.slot_on, rec.decision.compared) == (True, True)
            return d, t

    async def test_a_contact_of_a_queue_whose_slot_is_off_is_not_paired_as_on(self) -> None:
        """support is OFF: the decision pairs within sales (ON), not the support
        contact labelled with sales' ON slot."""
        d, _ = await self._ready_with_two_waiting((False, True))
        assert (d.contact_id, d.queue, d.mode) == ("old-sales", "sales", cpb.MODE_PAIRED)

    async def test_contacts_of_queues_on_the_same_side_are_paired_together(self) -> None:
        """Control: both queues ON: greedy takes the better matched support contact."""
        d, _ = await self._ready_with_two_waiting((True, True))
        assert (d.contact_id, d.queue, d.mode) == ("new-support", "support", cpb.MODE_PAIRED)

"""The priced pairing policy: predicted outcome minus an agent price that idle
time lowers. Through a real server, and in process for the long utilisation run."""

from __future__ import annotations

import numpy as np
import pytest
from support import contact, login, running, settings
from test_pairing import run_queue, setup_pairing

from pairline._proto.pairline.v1 import common_pb2 as cpb
from pairline._proto.pairline.v1 import router_pb2 as rpb
from pairline.domain import AgentStatus
from pairline.model import dump_model
from pairline.pairing import IDLE_WORTH, PolicyConfig, QueuePairing, charge, contact_keys
from pairline.routing import Agent, QueueIndex

M = cpb


def identity_model() -> bytes:
    """score(x, a) = x0 * a0 + x1 * a1 (identity link: scores are the predictions)."""
    W = np.zeros((4, 3), np.float32)
    W[0, 0], W[1, 1] = 1.0, 1.0
    return dump_model(version="v1", W=W, wc=np.zeros(4), wa=np.zeros(3), b=0.0, link="identity")


class TestAgentSurplus:
    async def test_equal_prices_pick_the_best_prediction(self) -> None:
        """Before any agent has been charged, a contact goes to the best predicted agent."""
        async with running(settings(policy="priced")) as srv:
            await setup_pairing(srv, {"weak": [0, 0, 0], "strong": [1, 0.5, 0], "mid": [1, 0, 0]},
                                {"+1": [1, 0, 0, 0]})
            for a in ("weak", "strong", "mid"):
                await srv.acme.router.SetAgentState(login(a, "sales"))
            d = await srv.acme.router.RouteContact(contact("c1", customer_key="+1"))
            assert (d.mode, d.agent_id, d.policy) == (M.MODE_PAIRED, "strong", "priced")

    async def test_monitor_mode_records_the_priced_choice(self) -> None:
        """In monitor mode the decision follows the baseline (longest idle) and the
        priced choice is the shadow."""
        async with running(settings(policy="priced", monitor=True)) as srv:
            await setup_pairing(srv, {"weak": [0, 0, 0], "strong": [1, 0.5, 0]},
                                {"+1": [1, 0, 0, 0]})
            await srv.acme.router.SetAgentState(login("weak", "sales"))
            srv.clock.advance(1)
            await srv.acme.router.SetAgentState(login("strong", "sales"))
            d = await srv.acme.router.RouteContact(contact("c1", customer_key="+1"))
            assert (d.mode, d.agent_id, d.policy) == (M.MODE_BASELINE, "weak", "monitor:priced")
            assert d.shadow_agent_id == "strong"

    @pytest.mark.parametrize("policy", ["priced", "greedy"])
    async def test_idle_time_makes_an_agent_cheaper(self, policy: str) -> None:
        """A contact every 10 s, handled for 9 s: greedy gives every one to the strong
        agent (5 points of probability better); priced gives the first to it, then
        the weak agent's idle time lowers its price until work is shared."""
        model = dump_model(version="v1", W=np.zeros((4, 3), np.float32), wc=np.zeros(4),
                           wa=np.array([0.0, 1.0, 0.0]), b=0.0, link="identity")
        async with running(settings(policy=policy)) as srv:
            await setup_pairing(srv, {"strong": [0, 0.55, 0], "weak": [0, 0.5, 0]},
                                {"+1": [0, 0, 0, 0]}, model=model)
            r = srv.acme.router
            for a in ("strong", "weak"):
                await r.SetAgentState(login(a, "sales"))
            took = []
            for i in range(40):
                d = await r.RouteContact(contact(f"c{i}", customer_key="+1"))
                await r.ConfirmDecision(rpb.ConfirmDecisionRequest(decision_id=d.decision_id))
                took.append(d.agent_id)
                srv.clock.advance(9.0)
                await r.EndContact(rpb.EndContactRequest(
                    contact_id=f"c{i}", reason=rpb.END_REASON_HANDLED, wrap_up_ms=1))
                srv.clock.advance(1.0)
            assert took[0] == "strong"
            if policy == "greedy":
                assert took.count("strong") == 40
            else:
                assert "weak" in took[:6] and 15 <= took.count("weak") <= 25


class TestContactSurplus:
    async def test_agent_takes_the_contact_it_matters_most_to(self) -> None:
        """A free agent takes the waiting contact with the least reduced cost (what the
        contact loses against its best agent), not the one it scores highest with:
        c1 scores 0.9 with A but 0.95 with B; c2 scores 0.8 with A and 0.1 with B."""
        async with running(settings(policy="priced", batch=False)) as srv:
            await setup_pairing(srv, {"A": [0.9, 0.8, 0], "B": [0.95, 0.1, 0]},
                                {"+c1": [1, 0, 0, 0], "+c2": [0, 1, 0, 0]}, model=identity_model())
            away = rpb.AGENT_STATUS_AWAY
            r = srv.acme.router
            await r.SetAgentState(login("A", "sales", status=away))
            await r.SetAgentState(login("B", "sales", status=away))
            await r.RouteContact(contact("c1", customer_key="+c1"))
            await r.RouteContact(contact("c2", customer_key="+c2"))
            await r.SetAgentState(login("A", "sales"))
            d = await r.AgentReady(rpb.AgentReadyRequest(agent_id="A"))
            assert (d.contact_id, d.mode, d.policy) == ("c2", M.MODE_PAIRED, "priced")
            assert d.predicted_outcome == pytest.approx(0.8, abs=1e-6)

    @pytest.mark.parametrize(("policy", "expected"), [("greedy", "new"), ("priced", "old")])
    async def test_pairs_within_the_queue_the_baseline_would_serve(
            self, policy: str, expected: str) -> None:
        """An agent of two queues: greedy takes the better contact of either queue;
        priced (whose prices are per queue) pairs within the queue of the oldest
        contact, so pairing never moves service from one queue to another."""
        async with running(settings(policy=policy)) as srv:
            await setup_pairing(srv, {"A": [1, 0, 0]},
                                {"+low": [0, 0, 0, 0], "+high": [2, 0, 0, 0]})
            r = srv.acme.router
            await r.RouteContact(contact("old", queue="support", customer_key="+low"))
            srv.clock.advance(30)
            await r.RouteContact(contact("new", queue="sales", customer_key="+high"))
            await r.SetAgentState(login("A", "sales", "support"))
            d = await r.AgentReady(rpb.AgentReadyRequest(agent_id="A"))
            assert d.contact_id == expected

    def test_contacts_without_profile_are_indifferent(self) -> None:
        """Reduced costs are >= 0 for profiled contacts; one without a profile gets 0."""
        xs = [np.array([1, 0, 0, 0], np.float32), None]
        keys, scores = contact_keys(PolicyConfig("priced"), xs, [0.5, 0.5], [0.0, 0.0],
                                    np.array([0.9, 0, 0, 0], np.float32), 0.0, (0.0, 1.0),
                                    values=[0.95, 0.0], price=0.0, logistic=False)
        assert scores is not None
        assert keys == pytest.approx([0.05, 0.0])


class TestPrices:
    def test_idle_worth_is_per_cycle_of_the_queue(self) -> None:
        """With a decision every 2 s among 4 agents a cycle is 8 s: a second of idle
        time is worth IDLE_WORTH / 8; nothing before two decisions."""
        index = QueueIndex("q", agent_dim=1)
        for i in range(4):
            index.sync(Agent(f"a{i}", AgentStatus.AVAILABLE, {"q": 50}, [1, 0, 0, 0, 0]), 50,
                       None)
        pairing = QueuePairing(np.random.default_rng(0))
        assert pairing.idle_worth(index) == 0.0
        for k in range(50):
            pairing.decision(2.0 * k)
        assert pairing.idle_worth(index) == pytest.approx(IDLE_WORTH / 8)

    def test_charge_lowers_by_idle_spell_and_keeps_mean_zero(self) -> None:
        """charge lowers the taken agent's price by the worth of its idle spell,
        relative to the others, and prices keep a mean of 0 over logged-in agents."""
        index = QueueIndex("q", agent_dim=1)
        for i in range(4):
            a = Agent(f"a{i}", AgentStatus.AVAILABLE, {"q": 50}, [1, 0, 0, 0, 0],
                      idle_since=10.0 * i)
            index.sync(a, 50, np.zeros(1, np.float32))
        rows = np.array([index.row_of[f"a{i}"] for i in range(4)])
        pairing = QueuePairing(np.random.default_rng(0))
        for k in range(50):
            pairing.decision(2.0 * k - 100)  # cycle 8 s: worth IDLE_WORTH / 8 per second
        first = pairing.idle_worth(index)
        assert first == pytest.approx(IDLE_WORTH / 8)
        charge(index, pairing, int(rows[0]), now=100.0)  # idle 100 s
        second = pairing.idle_worth(index)  # the 102 s gap lengthened the cycle
        charge(index, pairing, int(rows[3]), now=100.0)  # idle 70 s
        p = index.price[rows]
        assert p.sum() == pytest.approx(0.0, abs=1e-12)
        assert p[0] - p[1] == pytest.approx(-100 * first)
        assert p[3] - p[1] == pytest.approx(-70 * second) and second < first
        assert p[1] == pytest.approx(p[2])


class TestUtilisation:
    async def test_priced_spreads_work_evenly_and_gains(self) -> None:
        """On a long random sequence priced keeps every agent's share within 25 % of the
        mean while raising the expected outcome over the baseline by more than diagonal."""
        priced, priced_out = await run_queue("priced")
        _, diag_out = await run_queue("diagonal")
        base, base_out = await run_queue("baseline")
        assert priced.sum() == base.sum() == 3000
        assert priced.std() / priced.mean() < 0.1
        assert priced.max() / priced.mean() < 1.25 and priced.min() / priced.mean() > 0.75
        assert priced_out > diag_out > base_out

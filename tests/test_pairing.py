"""Pairing policies, modes, models and eligibility through a real server (and,
for the long utilisation runs, the same service in process)."""

from __future__ import annotations

import asyncio
import heapq

import numpy as np
import pytest
from support import Running, contact, login, running, settings

from pairline._proto.pairline.v1 import common_pb2 as cpb
from pairline._proto.pairline.v1 import profiles_pb2 as ppb
from pairline._proto.pairline.v1 import router_pb2 as rpb
from pairline.domain import AgentStateRequest, AgentStatus, Channel, ContactRequest, EndReason, Mode
from pairline.model import dump_model
from pairline.pairing import PolicyConfig, QueuePairing, Scorer, choose_agent, refresh_bands
from pairline.routing import Agent, QueueIndex
from pairline.service import ProfileIn, Service
from pairline.stores import MemoryStore
from pairline.testing import FakeClock

M = cpb


def model_bytes(version: str = "v1", scale: float = 1.0, context: tuple[str, ...] = ()) -> bytes:
    """score(x, a) = scale * x0 * a0 + a1 (+ 2 * intent * a2): agent quality in a0/a1."""
    W = np.zeros((4 + len(context), 3), np.float32)
    W[0, 0] = scale
    if context:
        W[4, 2] = 2.0
    return dump_model(version=version, W=W, wc=np.zeros(4 + len(context)),
                      wa=np.array([0.0, 1.0, 0.0]), b=0.0, context_features=context)


async def setup_pairing(srv: Running, agents: dict[str, list[float]], customers: dict[str, list[float]],
                        model: bytes | None = None) -> None:
    p = srv.acme.profiles
    await p.UploadModel(ppb.UploadModelRequest(model=model or model_bytes(), activate=True))
    await p.UpsertAgentProfiles(ppb.AgentProfileBatch(profiles=[
        ppb.AgentProfile(agent_id=a, vector=v, source_time_ms=1) for a, v in agents.items()]))
    for key, vec in customers.items():
        await p.UpsertCustomerProfile(ppb.CustomerProfile(customer_key=key, vector=vec,
                                                          source_time_ms=1))


def sigmoid(z: float) -> float:
    return float(1 / (1 + np.exp(-z)))


class TestGreedy:
    async def test_highest_predicted_outcome_wins(self) -> None:
        """greedy gives the contact to the free agent with the best prediction, not the longest idle."""
        async with running(settings(policy="greedy")) as srv:
            await setup_pairing(srv, {"weak": [0, 0, 0], "strong": [1, 0.5, 0], "mid": [1, 0, 0]},
                                {"+1": [1, 0, 0, 0]})
            for a in ("weak", "strong", "mid"):
                await srv.acme.router.SetAgentState(login(a, "sales"))
            d = await srv.acme.router.RouteContact(contact("c1", customer_key="+1"))
            assert (d.mode, d.agent_id, d.policy, d.model_version) == (M.MODE_PAIRED, "strong", "greedy", "v1")
            assert d.predicted_outcome == pytest.approx(sigmoid(1.5), rel=1e-5)

    async def test_ties_fall_back_to_longest_idle(self) -> None:
        """Equal predictions go to the agent idle longest; a single eligible agent is taken."""
        async with running(settings(policy="greedy")) as srv:
            await setup_pairing(srv, {"a": [1, 0, 0], "b": [1, 0, 0]}, {"+1": [1, 0, 0, 0]})
            await srv.acme.router.SetAgentState(login("b", "sales"))
            srv.clock.advance(1)
            await srv.acme.router.SetAgentState(login("a", "sales"))
            d = await srv.acme.router.RouteContact(contact("c1", customer_key="+1"))
            assert d.agent_id == "b" and d.mode == M.MODE_PAIRED
            d = await srv.acme.router.RouteContact(contact("c2", customer_key="+1"))
            assert d.agent_id == "a"

    async def test_excluded_agent_never_picked_even_if_best(self) -> None:
        """Eligibility comes first: an excluded or under-skilled agent is not chosen by pairing."""
        async with running(settings(policy="greedy")) as srv:
            await setup_pairing(srv, {"best": [5, 0, 0], "ok": [1, 0, 0], "novice": [9, 0, 0]},
                                {"+1": [1, 0, 0, 0]})
            await srv.acme.router.SetAgentState(login("best", "sales"))
            await srv.acme.router.SetAgentState(login("ok", "sales"))
            await srv.acme.router.SetAgentState(login("novice", ("sales", 10)))
            d = await srv.acme.router.RouteContact(
                contact("c1", customer_key="+1", excluded_agent_ids=["best"], min_proficiency=40))
            assert d.agent_id == "ok"

    async def test_preferred_agents_first(self) -> None:
        """A preferred agent who is eligible is chosen among the preferred only; else anyone."""
        async with running(settings(policy="greedy")) as srv:
            await setup_pairing(srv, {"best": [5, 0, 0], "fav": [1, 0, 0]}, {"+1": [1, 0, 0, 0]})
            await srv.acme.router.SetAgentState(login("best", "sales"))
            await srv.acme.router.SetAgentState(login("fav", "sales"))
            d = await srv.acme.router.RouteContact(
                contact("c1", customer_key="+1", preferred_agent_ids=["fav", "unknown"]))
            assert d.agent_id == "fav"
            d = await srv.acme.router.RouteContact(
                contact("c2", customer_key="+1", preferred_agent_ids=["fav"]))
            assert d.agent_id == "best"  # fav is busy now: anyone eligible

    async def test_context_features_enter_the_score(self) -> None:
        """Real-time context named by the model changes the choice."""
        async with running(settings(policy="greedy")) as srv:
            await setup_pairing(srv, {"plain": [0, 0.5, 0], "intent-expert": [0, 0, 1]},
                                {"+1": [0, 0, 0, 0]}, model=model_bytes(context=("intent",)))
            await srv.acme.router.SetAgentState(login("plain", "sales"))
            await srv.acme.router.SetAgentState(login("intent-expert", "sales"))
            d = await srv.acme.router.RouteContact(contact("c0", customer_key="+1"))
            assert d.agent_id == "plain"
            await srv.acme.router.EndContact(rpb.EndContactRequest(contact_id="c0",
                                                                   reason=rpb.END_REASON_ABANDONED))
            d = await srv.acme.router.RouteContact(contact("c1", customer_key="+1",
                                                           context={"intent": 1.0}))
            assert d.agent_id == "intent-expert"
            assert d.predicted_outcome == pytest.approx(sigmoid(2.0), rel=1e-5)


class TestModes:
    async def test_no_profile_routes_by_baseline(self) -> None:
        """A customer without a profile (or no key) is routed by the baseline, mode NO_PROFILE."""
        async with running(settings(policy="greedy")) as srv:
            await setup_pairing(srv, {"weak": [0, 0, 0], "strong": [1, 1, 0]}, {})
            await srv.acme.router.SetAgentState(login("weak", "sales"))
            srv.clock.advance(1)
            await srv.acme.router.SetAgentState(login("strong", "sales"))
            d = await srv.acme.router.RouteContact(contact("c1", customer_key="+unknown"))
            assert (d.mode, d.agent_id, d.policy) == (M.MODE_NO_PROFILE, "weak", "baseline")
            d = await srv.acme.router.RouteContact(contact("c2"))
            assert d.mode == M.MODE_NO_PROFILE

    async def test_no_model_means_no_profile_mode(self) -> None:
        """Pairing switched on but no active model: baseline with mode NO_PROFILE."""
        async with running(settings(policy="diagonal")) as srv:
            await srv.acme.router.SetAgentState(login("a", "sales"))
            d = await srv.acme.router.RouteContact(contact("c1", customer_key="+1"))
            assert d.mode == M.MODE_NO_PROFILE and d.agent_id == "a"

    async def test_monitor_mode_records_the_shadow_choice(self) -> None:
        """Monitor mode follows the baseline and records pairing's choice and both predictions."""
        async with running(settings(policy="greedy", monitor=True)) as srv:
            await setup_pairing(srv, {"weak": [0, 0, 0], "strong": [1, 1, 0]}, {"+1": [1, 0, 0, 0]})
            await srv.acme.router.SetAgentState(login("weak", "sales"))
            srv.clock.advance(1)
            await srv.acme.router.SetAgentState(login("strong", "sales"))
            d = await srv.acme.router.RouteContact(contact("c1", customer_key="+1"))
            assert (d.mode, d.agent_id, d.shadow_agent_id) == (M.MODE_BASELINE, "weak", "strong")
            assert d.policy == "monitor:greedy"
            assert d.predicted_outcome == pytest.approx(sigmoid(0.0), rel=1e-5)
            assert d.shadow_predicted_outcome == pytest.approx(sigmoid(2.0), rel=1e-5)

    async def test_per_queue_policy(self) -> None:
        """Pairing can be switched on for one queue and left off for another."""
        cfg = settings(policy="baseline", queue_policies=(("vip", "greedy"),))
        async with running(cfg) as srv:
            await setup_pairing(srv, {"weak": [0, 0, 0], "strong": [1, 1, 0]}, {"+1": [1, 0, 0, 0]})
            await srv.acme.router.SetAgentState(login("weak", "sales", "vip"))
            srv.clock.advance(1)
            await srv.acme.router.SetAgentState(login("strong", "sales", "vip"))
            d = await srv.acme.router.RouteContact(contact("c1", queue="vip", customer_key="+1"))
            assert (d.mode, d.agent_id) == (M.MODE_PAIRED, "strong")
            d = await srv.acme.router.RouteContact(contact("c2", queue="sales", customer_key="+1"))
            assert (d.mode, d.agent_id) == (M.MODE_BASELINE, "weak")


class TestContactSurplus:
    async def _queue_two(self, srv: Running) -> None:
        await srv.acme.router.RouteContact(contact("old", customer_key="+low"))
        srv.clock.advance(30)
        await srv.acme.router.RouteContact(contact("new", customer_key="+high"))

    async def test_greedy_agent_takes_best_waiting_contact(self) -> None:
        """In contact surplus greedy picks the waiting contact with the best prediction."""
        async with running(settings(policy="greedy")) as srv:
            await setup_pairing(srv, {"a": [1, 0, 0]}, {"+low": [0, 0, 0, 0], "+high": [2, 0, 0, 0]})
            await self._queue_two(srv)
            await srv.acme.router.SetAgentState(login("a", "sales"))
            d = await srv.acme.router.AgentReady(rpb.AgentReadyRequest(agent_id="a"))
            assert (d.contact_id, d.mode) == ("new", M.MODE_PAIRED)

    async def test_wait_weight_lets_the_old_contact_win(self) -> None:
        """The waiting-time knob trades pairing quality for waiting time."""
        async with running(settings(policy="greedy", wait_weight=5.0)) as srv:
            await setup_pairing(srv, {"a": [1, 0, 0]}, {"+low": [0, 0, 0, 0], "+high": [2, 0, 0, 0]})
            await self._queue_two(srv)
            await srv.acme.router.SetAgentState(login("a", "sales"))
            d = await srv.acme.router.AgentReady(rpb.AgentReadyRequest(agent_id="a"))
            assert d.contact_id == "old"

    async def test_priority_still_comes_first(self) -> None:
        """Pairing chooses within the highest priority waiting, never across priorities."""
        async with running(settings(policy="greedy")) as srv:
            await setup_pairing(srv, {"a": [1, 0, 0]}, {"+low": [0, 0, 0, 0], "+high": [2, 0, 0, 0]})
            await srv.acme.router.RouteContact(contact("vip", customer_key="+low", priority=9))
            await srv.acme.router.RouteContact(contact("best", customer_key="+high"))
            await srv.acme.router.SetAgentState(login("a", "sales"))
            d = await srv.acme.router.AgentReady(rpb.AgentReadyRequest(agent_id="a"))
            assert d.contact_id == "vip"

    @pytest.mark.parametrize(("batch", "expected"), [(True, "c2"), (False, "c1")])
    async def test_batch_assignment_when_several_agents_free(self, batch: bool, expected: str) -> None:
        """With two agents free and two contacts waiting the best total assignment is used."""
        # scores: c1-A 0.9, c1-B 0.85, c2-A 0.8, c2-B 0.1 (identity link)
        W = np.zeros((4, 3), np.float32)
        W[0, 0], W[1, 1] = 1.0, 1.0
        m = dump_model(version="v1", W=W, wc=np.zeros(4), wa=np.zeros(3), b=0.0, link="identity")
        async with running(settings(policy="greedy", batch=batch)) as srv:
            await setup_pairing(srv, {"A": [0.9, 0.8, 0], "B": [0.85, 0.1, 0]},
                                {"+c1": [1, 0, 0, 0], "+c2": [0, 1, 0, 0]}, model=m)
            away = rpb.AGENT_STATUS_AWAY
            await srv.acme.router.SetAgentState(login("A", "sales", status=away))
            await srv.acme.router.SetAgentState(login("B", "sales", status=away))
            await srv.acme.router.RouteContact(contact("c1", customer_key="+c1"))
            await srv.acme.router.RouteContact(contact("c2", customer_key="+c2"))
            await srv.acme.router.SetAgentState(login("B", "sales"))  # free, has not asked yet
            d = await srv.acme.router.AgentReady(rpb.AgentReadyRequest(agent_id="A"))
            assert d.contact_id == expected and d.mode == M.MODE_PAIRED


class TestEligibility:
    async def test_proficiency_relaxes_as_the_contact_waits(self) -> None:
        """A contact needing proficiency 80 reaches a 50 agent once the 20 s step allows 50."""
        async with running(settings(relax_steps=((10.0, 65), (20.0, 50)))) as srv:
            await srv.acme.router.SetAgentState(login("a", ("sales", 50)))
            for t, mode in [(0, M.MODE_QUEUED), (10, M.MODE_QUEUED), (9.9, M.MODE_QUEUED),
                            (0.1, M.MODE_BASELINE)]:
                srv.clock.advance(t)
                d = await srv.acme.router.RouteContact(contact("c1", min_proficiency=80))
                assert d.mode == mode

    async def test_relaxation_also_applies_in_contact_surplus(self) -> None:
        """An agent asking for work gets a contact once its requirement has relaxed enough."""
        async with running(settings(relax_steps=((10.0, 40),))) as srv:
            await srv.acme.router.RouteContact(contact("c1", min_proficiency=80))
            await srv.acme.router.SetAgentState(login("a", ("sales", 50)))
            d = await srv.acme.router.AgentReady(rpb.AgentReadyRequest(agent_id="a"))
            assert d.mode == M.MODE_QUEUED
            srv.clock.advance(10)
            d = await srv.acme.router.AgentReady(rpb.AgentReadyRequest(agent_id="a"))
            assert d.contact_id == "c1"


class TestModels:
    async def test_atomic_swap_under_concurrent_routing(self) -> None:
        """Every decision's prediction is exactly its reported model version's: no mixing."""
        async with running(settings(policy="greedy")) as srv:
            m1, m2 = model_bytes("v1", 1.0), model_bytes("v2", 3.0)
            await srv.acme.profiles.UploadModel(ppb.UploadModelRequest(model=m2))
            n = 40
            await setup_pairing(srv, {f"a{i}": [i / n, 0, 0] for i in range(n)}, {"+1": [1, 0, 0, 0]},
                                model=m1)
            for i in range(n):
                await srv.acme.router.SetAgentState(login(f"a{i}", "sales"))

            async def route(i: int) -> cpb.Decision:
                return await srv.acme.router.RouteContact(contact(f"c{i}", customer_key="+1"))

            async def flip() -> None:
                for k in range(20):
                    await srv.acme.profiles.ActivateModel(ppb.ActivateModelRequest(version=f"v{k % 2 + 1}"))

            results = await asyncio.gather(*(route(i) for i in range(n)), flip())
            decisions = results[:n]
            scale = {"v1": 1.0, "v2": 3.0}
            seen = set()
            for d in decisions:
                q = int(d.agent_id[1:]) / n
                assert d.predicted_outcome == pytest.approx(sigmoid(scale[d.model_version] * q), rel=1e-5)
                seen.add(d.model_version)
            assert seen <= {"v1", "v2"}
            info = await srv.acme.profiles.GetModelInfo(ppb.GetModelInfoRequest())
            assert info.active.version == "v2"


# --------------------------------------------------------- long-run utilisation
async def run_queue(policy: str, *, n_agents: int = 10, n_contacts: int = 3000, seed: int = 7,
                    load: float = 0.6) -> tuple[np.ndarray, float]:
    """An M/M/n queue driven through the service in process; returns contacts per
    agent and the mean predicted outcome of the pairs made."""
    rng = np.random.default_rng(seed)
    clock = FakeClock()
    svc = Service(settings(policy=policy, wrap_up_s=0.0, offer_timeout_s=1e9), MemoryStore(), clock)
    quality = np.linspace(-1, 1, n_agents)
    W = np.zeros((4, 3), np.float32)
    W[0, 0] = 1.0
    await svc.upload_model("acme", dump_model(version="v", W=W, wc=np.zeros(4),
                                              wa=np.array([0, 1.0, 0]), b=0.0), activate=True)
    await svc.upsert_agent_profiles("acme", [
        ProfileIn(f"a{i}", [quality[i], quality[i], 0], 1, 1) for i in range(n_agents)])
    keys = [f"+{i}" for i in range(200)]
    x0 = {k: float(rng.normal()) for k in keys}
    await svc.upsert_customer_profiles("acme", [ProfileIn(k, [x0[k], 0, 0, 0], 1, 1) for k in keys])
    key_of: dict[str, str] = {}
    for i in range(n_agents):
        await svc.set_agent_state("acme", AgentStateRequest(f"a{i}", AgentStatus.AVAILABLE,
                                                            (("q", 50),), (1, 0, 0, 0, 0)))
    handle = 1.0
    rate = load * n_agents / handle
    events: list[tuple[float, int, str]] = []
    t = 0.0
    for i in range(n_contacts):
        t += rng.exponential(1 / rate)
        heapq.heappush(events, (t, 0, f"c{i}"))
    counts = np.zeros(n_agents)
    outcomes = []

    def took(d) -> None:  # type: ignore[no-untyped-def]
        q = quality[int(d.agent_id[1:])]
        counts[int(d.agent_id[1:])] += 1
        outcomes.append(1 / (1 + np.exp(-(x0[key_of[d.contact_id]] * q + q))))
        heapq.heappush(events, (clock.t - start + rng.exponential(handle), 1, d.contact_id))

    start = clock.t
    while events:
        at, kind, cid = heapq.heappop(events)
        clock.t = start + at
        if kind == 0:
            key_of[cid] = str(rng.choice(keys))
            d = await svc.route_contact("acme", ContactRequest(cid, "q", Channel.VOICE,
                                                               customer_key=key_of[cid]))
            if d.mode is not Mode.QUEUED:
                await svc.confirm("acme", d.decision_id)
                took(d)
        else:
            end = await svc.end_contact("acme", cid, EndReason.HANDLED, 0.0)
            d = await svc.agent_ready("acme", end.agent_id)
            if d.mode is not Mode.QUEUED:
                await svc.confirm("acme", d.decision_id)
                took(d)
    return counts, float(np.mean(outcomes))


class TestUtilisation:
    async def test_diagonal_spreads_work_evenly_greedy_does_not(self) -> None:
        """On a long random sequence diagonal keeps every agent's share within 25% of the
        mean (coefficient of variation < 0.1), while greedy overloads the strongest."""
        diag, diag_out = await run_queue("diagonal")
        greedy, greedy_out = await run_queue("greedy")
        base, base_out = await run_queue("baseline")
        cv = lambda c: float(c.std() / c.mean())  # noqa: E731
        assert diag.sum() == greedy.sum() == base.sum() == 3000
        assert cv(diag) < 0.1 and diag.max() / diag.mean() < 1.25 and diag.min() / diag.mean() > 0.75
        assert cv(greedy) > 0.2
        assert greedy[-1] > 1.3 * greedy[0]  # the strongest agent works the most
        assert diag_out > base_out + 0.03  # and pairing raises the expected outcome


class TestBandsUnit:
    def test_equal_bands_without_skew_and_wider_for_strong_with_skew(self) -> None:
        """skew 0 gives equal bands ordered by performance; skew > 0 widens stronger agents'."""
        model = dump_model(version="v", W=np.zeros((4, 3), np.float32), wc=np.zeros(4),
                           wa=np.array([1.0, 0, 0]), b=0.0)
        from pairline.model import load_model
        scorer = Scorer(load_model(model, customer_dim=4, agent_dim=3))
        index = QueueIndex("q", agent_dim=3)
        for i, q in enumerate([0.3, 0.1, 0.2, 0.4]):
            a = Agent(f"a{i}", AgentStatus.AVAILABLE, {"q": 50}, [1, 0, 0, 0, 0])
            index.sync(a, 50, np.array([q, 0, 0], np.float32))
        pairing = QueuePairing(np.random.default_rng(0))
        refresh_bands(index, pairing, scorer, 0.0, now=0.0)
        rows = [index.row_of[f"a{i}"] for i in (1, 2, 0, 3)]  # by performance
        assert np.allclose(index.lo[rows], [0, 0.25, 0.5, 0.75])
        assert np.allclose(index.hi[rows], [0.25, 0.5, 0.75, 1.0])
        refresh_bands(index, pairing, scorer, 2.0, now=0.0)
        widths = index.hi[rows] - index.lo[rows]
        assert np.all(np.diff(widths) > 0) and index.hi[rows][-1] == 1.0
        # A contact at percentile 0.6 goes to the agent whose band holds it.
        all_rows = np.array(sorted(index.row_of.values()), dtype=np.int64)
        k = choose_agent(PolicyConfig("diagonal"), index, all_rows, None, 0.0, 0.1)
        assert index.ids[int(all_rows[k])] == "a1"


class TestModelFromConfig:
    async def test_model_path_is_loaded_and_active_before_serving(self, tmp_path) -> None:  # type: ignore[no-untyped-def]
        """A model named in the configuration is active once the server is SERVING."""
        path = tmp_path / "model.npz"
        path.write_bytes(model_bytes("from-disk"))
        async with running(settings(policy="greedy", model_path=str(path))) as srv:
            info = await srv.acme.profiles.GetModelInfo(ppb.GetModelInfoRequest())
            assert info.active.version == "from-disk"
            await setup_pairing(srv, {"weak": [0, 0, 0], "strong": [1, 1, 0]}, {"+1": [1, 0, 0, 0]},
                                model=model_bytes("from-disk"))
            await srv.acme.router.SetAgentState(login("weak", "sales"))
            await srv.acme.router.SetAgentState(login("strong", "sales"))
            d = await srv.acme.router.RouteContact(contact("c1", customer_key="+1"))
            assert (d.agent_id, d.model_version) == ("strong", "from-disk")

    async def test_every_decision_reports_the_active_version(self) -> None:
        """Baseline and no-profile decisions carry the active model version too."""
        async with running(settings(policy="greedy")) as srv:
            await setup_pairing(srv, {"a": [1, 0, 0]}, {})
            await srv.acme.router.SetAgentState(login("a", "sales"))
            d = await srv.acme.router.RouteContact(contact("c1", customer_key="+none"))
            assert (d.mode, d.model_version) == (M.MODE_NO_PROFILE, "v1")

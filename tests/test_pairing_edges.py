"""Pairing at its edges: preferred agents in contact surplus, a model swap under
diagonal pairing, waiting credit in batches, scores that overflow float32,
unprofiled agents under greedy, model metadata the API cannot carry. The real
Service on the embedded store with a fake clock (driven with ``run_now``), and a
real server where the gRPC status matters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import numpy as np
import pytest
from support import contact, login, running, settings, tenant

from pairline import service as service_module
from pairline._proto.pairline.v1 import profiles_pb2 as ppb
from pairline._proto.pairline.v1 import router_pb2 as rpb
from pairline.config import Settings
from pairline.domain import (
    AgentStateRequest,
    AgentStatus,
    Channel,
    ContactRequest,
    Decision,
    EndReason,
    Mode,
)
from pairline.errors import FailedPrecondition, InvalidArgument, NotFound
from pairline.model import dump_model
from pairline.pairing import NO_PAIR, assign_batch
from pairline.service import ProfileIn, Service, run_now
from pairline.stores import MemoryStore
from pairline.testing import FakeClock


class Harness:
    """One tenant ``acme`` (4 x 3 profiles) on a real Service, called without a loop."""

    def __init__(self, seed: int = 0, **tenant_kw: Any) -> None:
        self.clock = FakeClock()
        self.store = MemoryStore()
        self.svc = Service(
            Settings(tenants=(tenant("acme", **tenant_kw),)), self.store, self.clock, seed=seed
        )
        self.rt = self.svc.tenants["acme"]

    def model(
        self,
        version: str = "m1",
        W: Any = None,
        wc: Any = None,
        wa: Any = None,
        b: float = 0.0,
        link: str = "logistic",
    ) -> None:
        W = np.zeros((4, 3)) if W is None else np.asarray(W)
        wc = np.zeros(4) if wc is None else np.asarray(wc)
        wa = np.zeros(3) if wa is None else np.asarray(wa)
        data = dump_model(version=version, W=W, wc=wc, wa=wa, b=b, link=link)
        run_now(self.svc.upload_model("acme", data, activate=True))

    def agent(
        self,
        agent_id: str,
        queues: Sequence[tuple[str, int]] = (("q", 50),),
        caps: tuple[int, ...] = (1, 0, 0, 0, 0),
        status: AgentStatus = AgentStatus.AVAILABLE,
    ) -> None:
        run_now(
            self.svc.set_agent_state(
                "acme", AgentStateRequest(agent_id, status, tuple(queues), caps)
            )
        )

    def agent_profile(self, agent_id: str, vec: Sequence[float]) -> None:
        run_now(self.svc.upsert_agent_profiles("acme", [ProfileIn(agent_id, vec, 1, 1)]))

    def customer(self, key: str, vec: Sequence[float]) -> None:
        run_now(self.svc.upsert_customer_profiles("acme", [ProfileIn(key, vec, 1, 1)]))

    def route(self, contact_id: str, queue: str = "q", **kw: Any) -> Decision:
        return run_now(
            self.svc.route_contact(
                "acme", ContactRequest(contact_id, queue, kw.pop("channel", Channel.VOICE), **kw)
            )
        )

    def ready(self, agent_id: str) -> Decision:
        return run_now(self.svc.agent_ready("acme", agent_id))

    def end(self, contact_id: str, reason: EndReason = EndReason.HANDLED) -> None:
        run_now(self.svc.end_contact("acme", contact_id, reason, 0.0))


def sigmoid(z: float) -> float:
    return float(1 / (1 + np.exp(-z)))


class TestPreferredInContactSurplus:
    @pytest.mark.parametrize("policy", ["baseline", "greedy", "diagonal", "priced"])
    def test_agent_ready_leaves_a_contact_to_its_free_preferred_agent(self, policy: str) -> None:
        """AgentReady(Y) does not take a contact that prefers X while X is free for it."""
        h = Harness(policy=policy)
        h.model(W=np.eye(4, 3))
        h.agent("X")
        h.agent("Y")
        first, second = h.route("c1"), h.route("c2")
        h.clock.advance(1)
        waiting = h.route("cp", preferred_agent_ids=frozenset({"X"}))
        assert waiting.mode is Mode.QUEUED
        x_call = first if first.agent_id == "X" else second
        y_call = second if x_call is first else first
        h.end(x_call.contact_id)
        h.clock.advance(6)  # X's wrap-up is over: free, without asking
        h.end(y_call.contact_id)
        assert h.ready("Y").mode is Mode.QUEUED
        # RouteContact gives the same contact to X; so does X's own AgentReady.
        d = h.ready("X")
        assert (d.contact_id, d.agent_id) == ("cp", "X")

    def test_held_for_a_free_preferred_agent_only_for_preferred_hold_s(self) -> None:
        """X became free without asking (its wrap-up ran out) and may never ask: past
        preferred_hold_s of waiting, Y takes the contact; within it, Y does not."""
        h = Harness()
        assert h.rt.routing.preferred_hold_s == 30.0
        h.agent("X")
        h.agent("Y")
        first, second = h.route("c1"), h.route("c2")
        for d in (first, second):  # connected: no offer runs out meanwhile
            run_now(h.svc.confirm("acme", d.decision_id))
        x_call = first if first.agent_id == "X" else second
        y_call = second if x_call is first else first
        h.end(x_call.contact_id)  # X in wrap-up
        waiting = h.route("cp", preferred_agent_ids=frozenset({"X"}))
        assert waiting.mode is Mode.QUEUED
        h.clock.advance(20)  # X's wrap-up is over: free for it, without a call
        h.end(y_call.contact_id)
        h.clock.advance(6)  # Y's wrap-up too; cp has waited 26 s
        assert h.ready("Y").mode is Mode.QUEUED
        h.clock.advance(5)  # 31 s
        d = h.ready("Y")
        assert (d.contact_id, d.agent_id) == ("cp", "Y")

    def test_another_agent_takes_it_when_no_preferred_agent_is_free(self) -> None:
        """A preference names whom to prefer, not whom to wait for: with X away, Y takes it."""
        h = Harness()
        h.agent("X", status=AgentStatus.AWAY)
        h.agent("Y", status=AgentStatus.AWAY)
        h.route("cp", preferred_agent_ids=frozenset({"X"}))
        h.agent("Y")
        d = h.ready("Y")
        assert (d.contact_id, d.agent_id) == ("cp", "Y")

    def test_preferred_agent_ineligible_for_it_does_not_hold_it(self) -> None:
        """A preferred agent who may not take the contact (proficiency) does not keep it from Y."""
        h = Harness()
        h.agent("X", queues=(("q", 10),), status=AgentStatus.AWAY)
        h.agent("Y", status=AgentStatus.AWAY)
        h.route("cp", preferred_agent_ids=frozenset({"X"}), min_proficiency=40)
        h.agent("X", queues=(("q", 10),))
        h.agent("Y")
        assert h.ready("Y").contact_id == "cp"

    def test_batch_gives_the_asking_agent_no_contact_preferring_another(self) -> None:
        """Greedy with batches: Y's best contact prefers free X, so Y gets the other one."""
        h = Harness(policy="greedy", batch=True)
        h.model(W=np.eye(4, 3), link="identity")
        for a in ("X", "Y"):
            h.agent_profile(a, [1, 0, 0])
            h.agent(a, status=AgentStatus.AWAY)
        h.customer("+hi", [5, 0, 0, 0])
        h.customer("+lo", [1, 0, 0, 0])
        h.route("cp", customer_key="+hi", preferred_agent_ids=frozenset({"X"}))
        h.route("other", customer_key="+lo")
        h.agent("X")
        h.agent("Y")
        d = h.ready("Y")
        assert (d.contact_id, d.agent_id, d.mode) == ("other", "Y", Mode.PAIRED)
        assert h.ready("X").contact_id == "cp"

    @pytest.mark.parametrize("policy", ["baseline", "greedy", "diagonal", "priced"])
    def test_random_traffic_never_passes_over_a_free_preferred_agent(self, policy: str) -> None:
        """Seeded random traffic: no AgentReady decision goes to an agent outside the
        contact's preferred set while one of those was free and eligible for it."""
        violations = []
        for seed in range(4):
            rng = np.random.default_rng(seed)
            h = Harness(policy=policy, seed=seed, relax_steps=((30.0, 60), (90.0, 0)))
            h.model(W=rng.normal(size=(4, 3)), wc=rng.normal(size=4), wa=rng.normal(size=3))
            agents = [f"a{i}" for i in range(6)]
            for a in agents:
                if rng.random() < 0.8:
                    h.agent_profile(a, rng.normal(size=3).tolist())
                queues = [
                    (q, int(rng.integers(0, 101))) for q in ("q1", "q2") if rng.random() < 0.7
                ] or [("q1", 50)]
                h.agent(a, queues, (int(rng.integers(1, 3)), 1, 0, 0, 0), AgentStatus.AWAY)
            for i in range(30):
                h.customer(f"+{i}", rng.normal(size=4).tolist())
            live: list[Decision] = []
            for step in range(250):
                h.clock.advance(float(rng.exponential(3.0)))
                r = rng.random()
                try:
                    if r < 0.4:
                        kw: dict[str, Any] = {}
                        if rng.random() < 0.5:
                            kw["preferred_agent_ids"] = frozenset(
                                rng.choice(agents, size=2, replace=False).tolist()
                            )
                        d = h.route(
                            f"c{step}",
                            queue=str(rng.choice(["q1", "q2"])),
                            channel=Channel(int(rng.integers(1, 3))),
                            min_proficiency=int(rng.integers(0, 80)),
                            customer_key=f"+{int(rng.integers(0, 30))}",
                            **kw,
                        )
                    elif r < 0.7:
                        now = h.clock.now()
                        free = {
                            a
                            for a in agents
                            if h.rt.routing.agents[a].presence is AgentStatus.AVAILABLE
                            and h.rt.routing.agents[a].wrap_until <= now
                        }
                        d = h.ready(str(rng.choice(agents)))
                        if d.decision_id:
                            c = h.rt.routing.contacts[d.contact_id]
                            hold = h.rt.routing.preferred_hold_s
                            if (c.preferred and d.agent_id not in c.preferred
                                    and now - c.arrival < hold):
                                index = h.rt.routing.queue(c.queue)
                                need = h.rt.routing.min_proficiency(c, now)
                                held = [
                                    a
                                    for a in c.preferred - {d.agent_id}
                                    if a in free
                                    and index.any_eligible((a,), c.channel, now, need, c.excluded)
                                ]
                                if held:
                                    violations.append((seed, step, d.contact_id, held))
                    elif r < 0.85 and live:
                        d = live.pop(int(rng.integers(len(live))))
                        h.end(d.contact_id)
                        continue
                    else:
                        st = [AgentStatus.AVAILABLE, AgentStatus.AWAY][int(rng.integers(2))]
                        run_now(
                            h.svc.set_agent_state(
                                "acme", AgentStateRequest(str(rng.choice(agents)), st)
                            )
                        )
                        continue
                except (FailedPrecondition, NotFound):
                    continue
                if d.decision_id:
                    live.append(d)
        assert violations == []


class TestModelSwap:
    def _fill(self, h: Harness, rng: np.random.Generator) -> None:
        for i in range(8):
            h.agent_profile(f"a{i}", rng.normal(size=3).tolist())
            h.agent(f"a{i}")
        for i in range(300):
            h.customer(f"+{i}", rng.normal(size=4).tolist())

    def _pcts(self, h: Harness, lo: int, hi: int) -> np.ndarray:
        out = []
        for i in range(lo, hi):
            d = h.route(f"c{i}", customer_key=f"+{i}")
            out.append(h.rt.routing.contacts[d.contact_id].pct)
            h.end(d.contact_id, EndReason.ABANDONED)
            h.clock.advance(1.0)
        return np.array(out)

    def test_new_model_ranks_contacts_only_against_its_own_values(self) -> None:
        """After activating a rescaled model, contact percentiles stay spread over
        (0, 1) instead of piling at the ends against the old model's values."""
        rng = np.random.default_rng(1)
        h = Harness(policy="diagonal", seed=3)
        W = rng.normal(size=(4, 3))
        h.model("v1", W=W)
        self._fill(h, rng)
        self._pcts(h, 0, 200)
        h.model("v2", W=W * 40)
        after = self._pcts(h, 200, 300)
        assert np.mean((after < 0.05) | (after > 0.95)) < 0.25
        assert 0.3 < float(np.median(after)) < 0.7

    def test_activation_forgets_values_and_axis_but_same_version_does_not(self) -> None:
        """Activating another version empties every queue's value history; activating
        the active one again keeps it."""
        rng = np.random.default_rng(2)
        h = Harness(policy="diagonal")
        h.model("v1", W=rng.normal(size=(4, 3)))
        self._fill(h, rng)
        self._pcts(h, 0, 10)
        pairing = h.rt.pairing("q")
        assert pairing.n == 10 and pairing.axis is not None
        h.model("v1", W=h.rt.scorer.W)  # the same file again
        assert pairing.n == 10
        h.model("v2", W=rng.normal(size=(4, 3)))
        assert (pairing.n, pairing.sorted.size, pairing.axis) == (0, 0, None)
        assert pairing.xbar is not None  # the same inputs: their mean stays

    def test_waiting_contact_is_ranked_again_under_the_new_model(self) -> None:
        """A contact queued under v1 is given a percentile under v2 when next paired."""
        rng = np.random.default_rng(4)
        h = Harness(policy="diagonal")
        h.model("v1", W=rng.normal(size=(4, 3)))
        self._fill(h, rng)
        self._pcts(h, 0, 20)
        for i in range(8):
            h.agent(f"a{i}", status=AgentStatus.AWAY)
        h.route("w", customer_key="+250")
        h.model("v2", W=rng.normal(size=(4, 3)) * 10)
        pairing = h.rt.pairing("q")
        assert pairing.n == 0
        h.agent("a0")
        d = h.ready("a0")
        assert d.contact_id == "w" and d.model_version == "v2"
        assert pairing.n == 1  # its v2 value is the new history's first


class TestBatchWaitingCredit:
    def _setup(self, h: Harness, x_vec: Sequence[float]) -> list[np.ndarray]:
        seen: list[np.ndarray] = []
        real = service_module.assign_batch

        def spy(cost: np.ndarray, eligible: np.ndarray | None = None) -> list[tuple[int, int]]:
            seen.append(cost.copy())
            return real(cost, eligible)

        self._restore = (service_module, real)
        service_module.assign_batch = spy  # type: ignore[assignment]
        h.model(W=np.eye(4, 3), link="identity")
        for a, vec in (("Y", [1, 0, 0]), ("X", x_vec)):
            h.agent_profile(a, vec)
            h.agent(a, status=AgentStatus.AWAY)
        h.customer("+p", [0.5, 0, 0, 0])
        h.route("noprof")  # no customer key: no profile
        h.clock.advance(200)  # waits 200 s: 10 units of waiting credit
        h.route("prof", customer_key="+p")
        h.agent("X")
        return seen

    def teardown_method(self) -> None:
        if hasattr(self, "_restore"):
            module, real = self._restore
            module.assign_batch = real  # type: ignore[attr-defined]

    def test_identical_agents_get_identical_cost_columns(self) -> None:
        """A contact without a profile costs the same for Y (asking) and X (same profile)."""
        h = Harness(policy="greedy", wait_weight=1.0)
        seen = self._setup(h, [1, 0, 0])
        h.ready("Y")
        cost = seen[-1]
        assert cost.shape == (2, 2)
        assert np.allclose(cost[:, 0], cost[:, 1])

    def test_waiting_credit_counts_once(self) -> None:
        """X is a little better for the profiled contact, so the best total gives it
        to X and the long-waiting unprofiled one to Y (counting the wait twice in X's
        column would swap them)."""
        h = Harness(policy="greedy", wait_weight=1.0)
        self._setup(h, [1.2, 0, 0])
        d = h.ready("Y")
        assert (d.contact_id, d.agent_id) == ("noprof", "Y")


def huge(h: Harness, policy_agents: dict[str, list[float]]) -> None:
    h.model(W=np.ones((4, 3)), link="identity")
    for a, vec in policy_agents.items():
        h.agent_profile(a, vec)
        h.agent(a, status=AgentStatus.AWAY)
    h.customer("+big", [1e20, 1e20, 0, 0])
    h.customer("+small", [1, 1, 1, 1])


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
class TestOverflowingScores:
    @pytest.mark.parametrize("policy", ["greedy", "diagonal", "priced"])
    def test_batch_with_infinite_scores_still_decides(self, policy: str) -> None:
        """Huge finite profile values overflow scores to inf: AgentReady still pairs,
        and every agent after it too (no solver error)."""
        h = Harness(policy=policy)
        huge(h, {"Y": [1e20] * 3, "X1": [-1e20, 0, 0], "X2": [1, 1, 1]})
        h.route("c0", customer_key="+big")
        h.clock.advance(1)
        h.route("c1", customer_key="+small")
        h.clock.advance(1)
        h.agent("X1")
        h.agent("X2")
        d = h.ready("Y")
        assert d.decision_id and d.contact_id in ("c0", "c1")
        assert np.isfinite(d.predicted_outcome)
        other = h.ready("X1")
        assert {d.contact_id, other.contact_id} == {"c0", "c1"}

    def test_float32_overflow_is_scored_again_in_float64(self) -> None:
        """N's score (1e20 * 2e20 - 1e20 * 2e20 = 0) overflows float32 (inf or NaN,
        depending on the CPU): computed again in float64 it is 0, so G (6e20) wins
        although N has been idle longer."""
        h = Harness(policy="greedy")
        huge(h, {"N": [1e20, -1e20, 0], "G": [1, 1, 1]})
        h.agent("N")
        h.clock.advance(5)
        h.agent("G")
        d = h.route("c", customer_key="+big")
        assert (d.agent_id, d.mode) == ("G", Mode.PAIRED)
        assert d.predicted_outcome == pytest.approx(6e20, rel=1e-6)

    def test_equal_overflowing_scores_go_by_the_baseline(self) -> None:
        """Two agents with the same score past float32 tie: the longer idle one wins,
        whatever its row."""
        h = Harness(policy="greedy")
        huge(h, {"A": [1e20] * 3, "B": [1e20] * 3, "G": [1, 1, 1]})
        h.agent("A")
        h.clock.advance(1)
        h.agent("B")
        h.agent("G")
        h.agent("A", status=AgentStatus.AWAY)
        h.clock.advance(1)
        h.agent("A")  # A is now idle for a shorter time than B, on the first row
        d = h.route("c", customer_key="+big")
        assert d.agent_id == "B"
        assert d.predicted_outcome == pytest.approx(6e40, rel=1e-6)

    def test_infinite_and_undefined_scores_are_ranked_deterministically(self) -> None:
        """A contact whose folded vector is inf even in float32 (3e38 x 2): inf scores
        count as the largest float32, undefined ones (0 * inf) as the worst."""
        h = Harness(policy="greedy")
        h.model(W=np.ones((4, 3)), link="identity")
        for a, vec in (("Z", [1, 0, 0]), ("P", [1, 1, 1]), ("Q", [1, 1, 1])):
            h.agent_profile(a, vec)
            h.agent(a)
            h.clock.advance(1)
        h.customer("+inf", [3e38, 3e38, 0, 0])
        d = h.route("c1", customer_key="+inf")
        assert d.agent_id == "P"  # P and Q tie at inf: P idle longer; Z undefined
        assert d.predicted_outcome == pytest.approx(float(np.finfo(np.float32).max))
        assert h.route("c2", customer_key="+inf").agent_id == "Q"
        assert h.route("c3", customer_key="+inf").agent_id == "Z"

    def test_undefined_score_never_wins_in_contact_surplus(self) -> None:
        """An agent whose score with the oldest contact is NaN takes the next one."""
        h = Harness(policy="greedy", batch=False)
        h.model(W=np.eye(4, 3), link="identity")
        h.agent_profile("A", [1e20, 1e20, 0])
        h.agent("A", status=AgentStatus.AWAY)
        h.customer("+nan", [1e20, -1e20, 0, 0])
        h.customer("+ok", [1, 0, 0, 0])
        h.route("c-nan", customer_key="+nan")
        h.clock.advance(1)
        h.route("c-ok", customer_key="+ok")
        h.agent("A")
        d = h.ready("A")
        assert d.contact_id == "c-ok" and np.isfinite(d.predicted_outcome)

    def test_assign_batch_takes_non_finite_costs(self) -> None:
        """inf, -inf and NaN costs of eligible pairs reach the solver as finite
        costs; ineligible pairs stay out."""
        cost = np.array([[-np.inf, np.nan], [np.inf, NO_PAIR]])
        eligible = np.array([[True, True], [True, False]])
        assert assign_batch(cost, eligible) == [(0, 1), (1, 0)]
        assert assign_batch(np.array([[np.nan, -np.inf]])) == [(0, 1)]

    async def test_agent_ready_is_not_internal_through_a_server(self) -> None:
        """Through a real server, AgentReady with overflowing scores answers OK."""
        async with running(settings(policy="greedy")) as r:
            await r.acme.profiles.UploadModel(
                ppb.UploadModelRequest(
                    model=dump_model(
                        version="m", W=np.ones((4, 3)), wc=np.zeros(4), wa=np.zeros(3), b=0.0
                    ),
                    activate=True,
                )
            )
            await r.acme.profiles.UpsertAgentProfiles(
                ppb.AgentProfileBatch(
                    profiles=[
                        ppb.AgentProfile(agent_id="Y", vector=[1e20] * 3, source_time_ms=1),
                        ppb.AgentProfile(agent_id="X", vector=[1, 1, 1], source_time_ms=1),
                    ]
                )
            )
            for key, vec in (("+big", [1e20, 1e20, 0, 0]), ("+small", [1, 1, 1, 1])):
                await r.acme.profiles.UpsertCustomerProfile(
                    ppb.CustomerProfile(customer_key=key, vector=vec, source_time_ms=1)
                )
            for a in ("Y", "X"):
                await r.acme.router.SetAgentState(login(a, "sales", status=rpb.AGENT_STATUS_AWAY))
            for cid, key in (("c0", "+big"), ("c1", "+small")):
                await r.acme.router.RouteContact(contact(cid, customer_key=key))
            await r.acme.router.SetAgentState(login("X", "sales"))
            got = []
            for a in ("Y", "X"):
                d = await r.acme.router.AgentReady(rpb.AgentReadyRequest(agent_id=a))
                got.append(d.contact_id)
            assert sorted(got) == ["c0", "c1"]


class TestUnprofiledAgentsUnderGreedy:
    def _setup(self, **kw: Any) -> Harness:
        h = Harness(**kw)
        h.model(W=np.eye(4, 3) * 3)
        h.agent("U")  # no profile, idle longer
        h.clock.advance(5)
        h.agent_profile("P", [1, 0, 0])
        h.agent("P")
        h.customer("+k", [1, 0, 0, 0])
        return h

    def test_profiled_agent_wins_the_tie_with_the_unprofiled_mean(self) -> None:
        """U's key is the mean of the profiled agents' (P's own): P, not U, gets it,
        with P's predicted outcome."""
        h = self._setup(policy="greedy")
        d = h.route("c", customer_key="+k")
        assert (d.agent_id, d.mode) == ("P", Mode.PAIRED)
        assert d.predicted_outcome == pytest.approx(sigmoid(3.0))

    def test_unprofiled_agent_is_predicted_as_its_key_says(self) -> None:
        """Monitor mode gives the contact to U (longest idle, baseline): its predicted
        outcome is the score greedy's key gave U (the profiled agents' mean)."""
        h = self._setup(policy="greedy", monitor=True)
        d = h.route("c", customer_key="+k")
        assert (d.agent_id, d.shadow_agent_id) == ("U", "P")
        assert d.predicted_outcome == pytest.approx(sigmoid(3.0))
        assert d.shadow_predicted_outcome == pytest.approx(sigmoid(3.0))

    def test_strictly_better_profiled_agent_still_wins(self) -> None:
        """With two profiled agents, the better one wins over the unprofiled mean."""
        h = self._setup(policy="greedy")
        h.agent_profile("W", [0.2, 0, 0])
        h.agent("W")
        assert h.route("c", customer_key="+k").agent_id == "P"

    def test_only_unprofiled_agents_fall_back_to_the_baseline(self) -> None:
        """No eligible agent with a profile: longest idle, predicted from the contact alone."""
        h = Harness(policy="greedy")
        h.model(W=np.eye(4, 3) * 3, wc=[0.5, 0, 0, 0])
        h.agent("U1")
        h.clock.advance(1)
        h.agent("U2")
        h.customer("+k", [1, 0, 0, 0])
        d = h.route("c", customer_key="+k")
        assert d.agent_id == "U1" and d.predicted_outcome == pytest.approx(sigmoid(0.5))


def _zeros(version: str, trained_at_ms: int) -> bytes:
    """A model file of the test tenants' dimensions, all weights zero."""
    return dump_model(version=version, W=np.zeros((4, 3)), wc=np.zeros(4), wa=np.zeros(3),
                      b=0.0, trained_at_ms=trained_at_ms)


class TestModelMetadataRange:
    def test_trained_at_past_int64_is_refused_and_not_stored(self) -> None:
        """trained_at_ms >= 2**63: INVALID_ARGUMENT naming it; nothing stored or activated."""
        h = Harness()
        h.model("good")
        bad = _zeros("big", 2**63)
        with pytest.raises(InvalidArgument, match=r"meta\.trained_at_ms"):
            run_now(h.svc.upload_model("acme", bad, activate=True))
        active, models = run_now(h.svc.model_info("acme"))
        assert (active, [m.version for m in models]) == ("good", ["good"])
        assert h.rt.scorer is not None and h.rt.scorer.version == "good"

    async def test_model_rpcs_keep_working_through_a_server(self) -> None:
        """Through a real server: UploadModel answers INVALID_ARGUMENT, GetModelInfo OK."""
        async with running(settings()) as r:
            good = _zeros("good", 2**63 - 1)
            await r.acme.profiles.UploadModel(ppb.UploadModelRequest(model=good, activate=True))
            bad = _zeros("big", 2**63)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await r.acme.profiles.UploadModel(ppb.UploadModelRequest(model=bad, activate=True))
            assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "trained_at_ms" in (err.value.details() or "")
            info = await r.acme.profiles.GetModelInfo(ppb.GetModelInfoRequest())
            assert info.active.version == "good"
            assert info.active.trained_at_ms == 2**63 - 1
            assert [m.version for m in info.models] == ["good"]

"""From decisions to a trained model: ExportHistory, `pairline export`, `pairline train`."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from support import KEYS, contact, login, running, settings
from test_pairing import model_bytes, setup_pairing

from pairline._proto.pairline.v1 import common_pb2 as cpb
from pairline._proto.pairline.v1 import insights_pb2 as ipb
from pairline._proto.pairline.v1 import profiles_pb2 as ppb
from pairline._proto.pairline.v1 import router_pb2 as rpb
from pairline.cli import main
from pairline.model import load_model
from pairline.train import read_history


class TestExport:
    async def test_export_then_train(self, tmp_path) -> None:  # type: ignore[no-untyped-def]
        """Decisions with outcomes come back with their profiles and context; the CSV
        `pairline export` writes is what `pairline train` reads and fits."""
        rng = np.random.default_rng(5)
        customers = {f"+{i}": rng.normal(size=4).round(3).tolist() for i in range(40)}
        agents = {f"a{i}": rng.normal(size=3).round(3).tolist() for i in range(5)}
        async with running(settings(policy="baseline")) as srv:
            await setup_pairing(srv, agents, customers, model=model_bytes(context=("intent",)))
            r = srv.acme.router
            for a in agents:
                await r.SetAgentState(login(a, "sales"))
            sent = {}
            for i in range(1200):
                key = f"+{i % 40}"
                d = await r.RouteContact(contact(f"c{i}", customer_key=key,
                                                 context={"intent": float(i % 3)}))
                value = float(rng.random() < 0.5)
                if i % 10:  # some decisions get no outcome: not exported
                    await r.ReportOutcome(rpb.ReportOutcomeRequest(
                        decision_id=d.decision_id, outcomes={"converted": value}))
                    sent[d.decision_id] = (key, d.agent_id, value, float(i % 3))
                await r.EndContact(rpb.EndContactRequest(contact_id=d.contact_id,
                                                         reason=rpb.END_REASON_ABANDONED))
            rows = [row async for row in srv.acme.insights.ExportHistory(
                ipb.ExportHistoryRequest(outcome="converted"))]
            assert len(rows) == len(sent)
            for row in rows[:50]:
                key, agent, value, intent = sent[row.decision_id]
                assert row.outcome == value and row.mode == cpb.MODE_BASELINE
                assert list(row.customer) == pytest.approx(customers[key], abs=1e-6)
                assert list(row.agent) == pytest.approx(agents[agent], abs=1e-6)
                assert dict(row.context) == {"intent": intent}
            out = tmp_path / "history.csv"
            rc = await asyncio.to_thread(main, ["export", "--target", srv.server.address,
                                                "--key", KEYS["acme"], "--out", str(out)])
            assert rc == 0
        history = read_history(out)
        assert len(history.outcome) == len(sent)
        assert history.context_features == ("intent",)
        model_path = tmp_path / "model.npz"
        rc = main(["train", str(out), "--out", str(model_path), "--version", "trained-1"])
        assert rc == 0
        model = load_model(model_path.read_bytes(), customer_dim=4, agent_dim=3)
        assert model.version == "trained-1" and model.context_features == ("intent",)

    async def test_outcome_is_required(self) -> None:
        """Export names the outcome it exports."""
        import grpc

        async with running() as srv:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in srv.acme.insights.ExportHistory(ipb.ExportHistoryRequest()):
                    pass
            assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT


class TestPointInTime:
    async def test_a_profile_newer_than_the_decision_is_not_exported_with_it(self) -> None:
        """A customer profile refreshed after the decision (a CRM update after the
        sale) would leak the outcome into training: the row comes without it. A
        decision made without a profile gets one from before it, never a newer one."""
        async with running(settings(policy="greedy")) as srv:
            await setup_pairing(srv, {"a0": [1, 0, 0], "a1": [0, 1, 0]},
                                {"+old": [0.1, 0.2, 0.3, 0.4]})
            r, p = srv.acme.router, srv.acme.profiles
            for a in ("a0", "a1"):
                await r.SetAgentState(login(a, "sales"))
            now_ms = int(srv.clock.now() * 1000)
            paired = await r.RouteContact(contact("c1", customer_key="+old"))
            none = await r.RouteContact(contact("c2", customer_key="+new"))
            assert (paired.mode, none.mode) == (cpb.MODE_PAIRED, cpb.MODE_NO_PROFILE)
            for d in (paired, none):
                await r.ReportOutcome(rpb.ReportOutcomeRequest(
                    decision_id=d.decision_id, outcomes={"converted": 1.0}))

            name = {paired.decision_id: "c1", none.decision_id: "c2"}

            async def exported() -> dict[str, list[float]]:
                return {name[row.decision_id]: list(row.customer) async for row in
                        srv.acme.insights.ExportHistory(ipb.ExportHistoryRequest(
                            outcome="converted"))}

            assert (await exported())["c1"] == pytest.approx([0.1, 0.2, 0.3, 0.4])
            assert (await exported())["c2"] == []
            # Profiles collected after the decisions (source times after them).
            await p.UpsertCustomerProfiles(iter([ppb.CustomerProfileBatch(profiles=[
                ppb.CustomerProfile(customer_key=k, vector=[9, 9, 9, 9],
                                    source_time_ms=now_ms + 60_000)
                for k in ("+old", "+new")])]))
            assert await exported() == {"c1": [], "c2": []}

    async def test_a_profile_from_before_a_decision_made_without_one_is_exported(
        self,
    ) -> None:
        """Control: a profile uploaded late but collected before the decision is data
        the decision could have had: exported with it."""
        async with running(settings(policy="greedy")) as srv:
            await setup_pairing(srv, {"a0": [1, 0, 0]}, {})
            r, p = srv.acme.router, srv.acme.profiles
            await r.SetAgentState(login("a0", "sales"))
            now_ms = int(srv.clock.now() * 1000)
            d = await r.RouteContact(contact("c1", customer_key="+late"))
            assert d.mode == cpb.MODE_NO_PROFILE
            await r.ReportOutcome(rpb.ReportOutcomeRequest(
                decision_id=d.decision_id, outcomes={"converted": 0.0}))
            await p.UpsertCustomerProfiles(iter([ppb.CustomerProfileBatch(profiles=[
                ppb.CustomerProfile(customer_key="+late", vector=[1, 2, 3, 4],
                                    source_time_ms=now_ms - 1)])]))
            rows = [row async for row in srv.acme.insights.ExportHistory(
                ipb.ExportHistoryRequest(outcome="converted"))]
            assert [list(row.customer) for row in rows] == [pytest.approx([1, 2, 3, 4])]

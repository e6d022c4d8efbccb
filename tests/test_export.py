"""From decisions to a trained model: ExportHistory, `pairline export`, `pairline train`."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from support import KEYS, contact, login, running, settings
from test_pairing import model_bytes, setup_pairing

from pairline._proto.pairline.v1 import common_pb2 as cpb
from pairline._proto.pairline.v1 import insights_pb2 as ipb
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

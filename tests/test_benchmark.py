"""ON/OFF benchmarking: the slot schedule, the stratified estimate, and the report
through a real server."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from support import contact, error_field, login, running, settings
from test_pairing import setup_pairing

from pairline._proto.pairline.v1 import common_pb2 as cpb
from pairline._proto.pairline.v1 import insights_pb2 as ipb
from pairline._proto.pairline.v1 import router_pb2 as rpb
from pairline.benchmark import Observation, SlotSchedule, estimate

M = cpb


class TestSlotSchedule:
    def test_deterministic_keyed_and_shared_by_replicas(self) -> None:
        """Two schedules with one secret agree; another secret gives another schedule."""
        a = SlotSchedule("secret-0123456789", 60, 0.5, 10)
        b = SlotSchedule("secret-0123456789", 60, 0.5, 10)
        c = SlotSchedule("other-0123456789", 60, 0.5, 10)
        times = [30.0 + 60 * k for k in range(400)]
        sa = [a.state("q", t)[0] for t in times]
        assert sa == [b.state("q", t)[0] for t in times]
        assert sa != [c.state("q", t)[0] for t in times]
        assert sa != [a.state("other-queue", t)[0] for t in times]

    @pytest.mark.parametrize("share", [0.5, 0.8])
    def test_on_share_is_kept(self, share: float) -> None:
        """Over many slots the ON share is close to the configured one."""
        s = SlotSchedule("secret-0123456789", 60, share, 0)
        on = np.mean([s.state("q", 60 * k + 1)[0] for k in range(5000)])
        assert abs(on - share) < 0.03

    def test_stabilisation_window_only_after_a_switch(self) -> None:
        """Decisions early in a slot are left out only when the state just changed."""
        s = SlotSchedule("secret-0123456789", 60, 0.5, 10)
        for k in range(1, 200):
            changed = s.state("q", 60 * k + 30)[0] != s.state("q", 60 * (k - 1) + 30)[0]
            assert s.state("q", 60 * k + 5)[1] == (not changed)
            assert s.state("q", 60 * k + 10)[1] is True


class TestEstimate:
    def test_stratification_resists_simpsons_paradox(self) -> None:
        """ON is better in every stratum but mostly sampled in the poor one: the pooled means
        say OFF wins, the stratified estimate says ON wins."""
        obs = []
        # Stratum 1 (queue a, high outcomes): OFF 90 x 0.8, ON 10 x 0.9
        # Stratum 2 (queue b, low outcomes):  OFF 10 x 0.2, ON 90 x 0.3
        for q, on, n, p in [("a", False, 90, 0.8), ("a", True, 10, 0.9),
                            ("b", False, 10, 0.2), ("b", True, 90, 0.3)]:
            k = round(n * p)
            obs += [Observation(q, 0.0, on, 1.0 if i < k else 0.0, f"x{i}") for i in range(n)]
        pooled_on = np.mean([o.value for o in obs if o.on])
        pooled_off = np.mean([o.value for o in obs if not o.on])
        assert pooled_on < pooled_off
        r = estimate(obs)
        assert r.on_mean > r.off_mean and r.relative_gain > 0
        assert r.on_mean == pytest.approx(0.5 * 0.9 + 0.5 * 0.3)
        assert r.off_mean == pytest.approx(0.5 * 0.8 + 0.5 * 0.2)
        assert (r.on_count, r.off_count) == (100, 100)

    def test_interval_covers_the_true_gain(self) -> None:
        """Over 40 seeded runs with a known 10% gain the 95% interval covers it in >= 36."""
        covered = 0
        for seed in range(40):
            rng = np.random.default_rng(seed)
            obs = []
            for h in range(4):
                base = 0.2 + 0.1 * h
                for on in (True, False):
                    n = int(rng.integers(300, 900))
                    p = base * (1.1 if on else 1.0)
                    obs += [Observation("q", h * 3600.0, on, float(v), "a")
                            for v in rng.random(n) < p]
            r = estimate(obs)
            covered += r.ci_low <= 0.1 <= r.ci_high
        assert covered >= 36

    def test_no_gain_is_not_significant(self) -> None:
        """With no true difference the interval contains 0 in >= 36 of 40 runs."""
        hits = 0
        for seed in range(40):
            rng = np.random.default_rng(1000 + seed)
            obs = [Observation("q", 0.0, bool(on), float(v), "a")
                   for on, v in zip(rng.random(2000) < 0.5, rng.random(2000) < 0.3, strict=True)]
            r = estimate(obs)
            hits += r.ci_low <= 0 <= r.ci_high
        assert hits >= 36

    def test_empty_and_one_sided(self) -> None:
        """Without both sides in any stratum there is no gain to report."""
        assert estimate([]).relative_gain == 0.0
        r = estimate([Observation("q", 0.0, True, 1.0, "a")] * 5)
        assert (r.on_count, r.off_count, r.relative_gain) == (5, 0, 0.0)


class TestReportThroughServer:
    async def test_control_slots_and_report(self) -> None:
        """OFF slots route by baseline with mode CONTROL; reported outcomes come back
        stratified, with counts, means and an interval around the gain."""
        cfg = settings(policy="greedy", benchmark=True, slot_s=60.0, on_share=0.5,
                       stabilise_s=5.0)
        async with running(cfg) as srv:
            await setup_pairing(srv, {"weak": [0, 0, 0], "strong": [1, 1, 0]},
                                {"+1": [1, 0, 0, 0]})
            r = srv.acme.router
            await r.SetAgentState(login("weak", "sales"))
            await r.SetAgentState(login("strong", "sales"))
            sched = SlotSchedule(cfg.tenants[0].secret, 60.0, 0.5, 5.0)  # what replicas compute
            modes: dict[int, int] = {}
            expect: dict[bool, list[float]] = {True: [], False: []}
            srv.clock.t = 1_800_000_000.0 - (1_800_000_000.0 % 3600)  # start of an hour
            for i in range(120):
                srv.clock.advance(20.0)
                d = await r.RouteContact(contact(f"c{i}", customer_key="+1"))
                modes[d.mode] = modes.get(d.mode, 0) + 1
                assert d.mode in (M.MODE_PAIRED, M.MODE_CONTROL)
                if d.mode == M.MODE_PAIRED:
                    assert d.agent_id == "strong"
                value = 1.0 if (d.agent_id == "strong") == (i % 3 != 0) else 0.0
                await r.ReportOutcome(rpb.ReportOutcomeRequest(decision_id=d.decision_id,
                                                               outcomes={"converted": value}))
                on, counted = sched.state("sales", srv.clock.t)
                assert on == (d.mode == M.MODE_PAIRED)
                if counted:
                    expect[on].append(value)
                await r.EndContact(rpb.EndContactRequest(contact_id=d.contact_id,
                                                         reason=rpb.END_REASON_ABANDONED))
            assert modes.get(M.MODE_PAIRED, 0) > 10 and modes.get(M.MODE_CONTROL, 0) > 10
            rep = await srv.acme.insights.GetBenchmarkReport(
                ipb.GetBenchmarkReportRequest(outcome="converted"))
            assert (rep.on_count, rep.off_count) == (len(expect[True]), len(expect[False]))
            assert sum(s.on_count for s in rep.strata) == rep.on_count
            assert {s.queue for s in rep.strata} == {"sales"}
            assert rep.ci_low <= rep.relative_gain <= rep.ci_high
            # One hour, one stratum: the weighted means are the plain means.
            assert rep.on_mean == pytest.approx(np.mean(expect[True]))
            assert rep.off_mean == pytest.approx(np.mean(expect[False]))

    async def test_outcome_name_is_required(self) -> None:
        """The report needs the outcome to compare on."""
        async with running(settings(benchmark=True)) as srv:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await srv.acme.insights.GetBenchmarkReport(ipb.GetBenchmarkReportRequest())
            assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert error_field(err.value) == "outcome"


class TestReportCommand:
    async def test_report_prints_json_table_and_plot(self, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
        """`pairline report` reads the server's report: JSON, a table, and a PNG plot."""
        import asyncio
        import json

        from support import KEYS

        from pairline.cli import main

        cfg = settings(policy="greedy", benchmark=True, slot_s=60.0, stabilise_s=0.0)
        async with running(cfg) as srv:
            await setup_pairing(srv, {"a": [1, 0, 0]}, {"+1": [1, 0, 0, 0]})
            await srv.acme.router.SetAgentState(login("a", "sales"))
            for i in range(60):
                srv.clock.advance(30)
                d = await srv.acme.router.RouteContact(contact(f"c{i}", customer_key="+1"))
                await srv.acme.router.ReportOutcome(rpb.ReportOutcomeRequest(
                    decision_id=d.decision_id, outcomes={"converted": float(i % 2)}))
                await srv.acme.router.EndContact(rpb.EndContactRequest(
                    contact_id=d.contact_id, reason=rpb.END_REASON_ABANDONED))
            args = ["report", "--target", srv.server.address, "--key", KEYS["acme"]]
            png = tmp_path / "report.png"
            rc = await asyncio.to_thread(main, [*args, "--json", "--plot", str(png)])
            out = json.loads(capsys.readouterr().out)
            assert rc == 0 and out["outcome"] == "converted"
            assert int(out["onCount"]) + int(out["offCount"]) == 60
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            rc = await asyncio.to_thread(main, args)
            text = capsys.readouterr().out
            assert rc == 0 and "relative gain" in text and "sales" in text
            rc = await asyncio.to_thread(main, ["report", "--target", srv.server.address,
                                                "--key", "wrong"])
            assert rc == 1 and "UNAUTHENTICATED" in capsys.readouterr().err

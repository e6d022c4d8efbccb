"""``pairline loadtest`` against a real in-process server (system clock, ephemeral port):
closed and open loop, unary and Connect, churn, a wrong key, and the run's bounds."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from support import KEYS, Running, running, settings

from pairline._proto.pairline.v1 import insights_pb2 as ipb
from pairline._proto.pairline.v1 import router_pb2 as rpb
from pairline.clock import SystemClock
from pairline.loadtest import RACE_CODES, LoadOptions, add_loadtest_parser, main, run_loadtest

# A small contact center run hot: few agents, short handle and wrap-up times, short
# patience, so that every part of a switch's call mix happens within two seconds.
SMALL = {
    "agents": 12,
    "queues": 3,
    "handle_ms": 40.0,
    "wrap_ms": 20.0,
    "patience_ms": 300.0,
    "churn_per_s": 10.0,
    "away_ms": 150.0,
    "deadline_ms": 2_000.0,
    "seed": 7,
}
HEADLINE = ("rps", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "ok", "errors", "per_rpc")
LIFE_CYCLE = ("RouteContact", "ConfirmDecision", "EndContact", "AgentReady", "SetAgentState")


@asynccontextmanager
async def live() -> AsyncIterator[Running]:
    """A real server on an ephemeral loopback port, on the wall clock (wrap-ups end)."""
    async with running(settings(), clock=SystemClock()) as srv:  # type: ignore[arg-type]
        yield srv


def options(srv: Running, **kw: Any) -> dict[str, Any]:
    return {"target": srv.server.address, "key": KEYS["acme"], **SMALL, **kw}


def assert_sane(r: dict[str, Any]) -> None:
    """The figures every healthy run has."""
    for key in HEADLINE:
        assert key in r, key
    assert r["rps"] > 0 and r["ok"] > 0
    assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["p999_ms"] <= r["max_ms"]
    assert set(r["errors"]) <= RACE_CODES, r["errors"]
    assert r["ok"] + sum(r["errors"].values()) == r["calls"]
    assert r["requests"] == r["per_rpc"]["RouteContact"]["calls"]
    assert r["rps"] == pytest.approx(r["requests"] / r["elapsed_s"], rel=0.01)
    assert r["harness_errors"] == 0, r.get("harness_error_samples")
    json.loads(json.dumps(r))  # plain JSON all the way down


async def waiting_and_logged_in(srv: Running) -> tuple[int, int]:
    stats = await srv.acme.insights.GetQueueStats(ipb.GetQueueStatsRequest())
    return (sum(q.waiting for q in stats.queues), sum(q.agents_logged_in for q in stats.queues))


class TestClosedLoop:
    async def test_unary_run_reports_a_switch_call_mix(self) -> None:
        """Closed loop, unary: sane figures, every RPC of a contact's life, and a clean server."""
        async with live() as srv:
            r = await run_loadtest(options(srv, duration_s=2.0, concurrency=8))
            assert_sane(r)
            assert (r["loop"], r["mode"]) == ("closed", "unary")
            assert 2.0 <= r["elapsed_s"] <= 2.0 + 2.0
            for name in LIFE_CYCLE:
                assert r["per_rpc"][name]["ok"] > 0, name
            c = r["contacts"]
            assert c["arrived"] == r["requests"]
            # Agents were the bottleneck: contacts queued, agents picked them up after
            # wrap-up, the others hung up; the handled ones were ended as handled.
            assert c["queued"] > 0 and c["picked_up"] > 0 and c["abandoned"] > 0
            assert c["handled"] == r["per_rpc"]["EndContact"]["ok"] - c["abandoned"]
            assert (r["setup"]["calls"], r["setup"]["ok"]) == (12, 12)
            # The cleanup ended every contact and logged every agent out.
            assert r["cleanup"]["errors"].keys() <= RACE_CODES
            assert await waiting_and_logged_in(srv) == (0, 0)


class TestOpenLoop:
    async def test_fixed_rate_is_held(self) -> None:
        """Open loop at 150/s, evenly spaced: about 150 routing calls a second."""
        async with live() as srv:
            r = await run_loadtest(options(srv, rate=150.0, arrival="fixed", duration_s=2.0))
        assert_sane(r)
        assert r["loop"] == "open"
        assert r["rps"] == pytest.approx(150.0, rel=0.2)
        assert 280 <= r["requests"] <= 300

    async def test_latency_counts_from_the_scheduled_send(self) -> None:
        """A 300 ms stall of the client delays the arrivals due meanwhile: they are sent
        late, not dropped, and their latency counts from when they were due."""
        async with live() as srv:
            loop = asyncio.get_running_loop()
            loop.call_later(0.8, time.sleep, 0.3)  # the whole event loop stops for 300 ms
            r = await run_loadtest(options(srv, rate=200.0, arrival="fixed", duration_s=2.0))
        assert_sane(r)
        assert r["requests"] >= 395  # every arrival of the schedule was sent
        # ~60 of ~400 arrivals were due during the stall: waits of 0..300 ms.
        assert r["max_ms"] >= 250 and r["p99_ms"] >= 150
        # Timed from the actual send, the same calls look fast: the omission a
        # closed loop or a naive timer would make.
        assert r["service_p99_ms"] < r["p99_ms"] / 2


class TestConnect:
    async def test_every_event_gets_its_reply(self) -> None:
        """Closed loop over two Connect streams: every event of the run (setup and
        cleanup included) is answered and matched by request_id, none late."""
        async with live() as srv:
            r = await run_loadtest(options(srv, mode="connect", streams=2, window=8,
                                           concurrency=8, duration_s=2.0))
        assert_sane(r)
        s = r["connect"]
        assert s["opened"] == 2  # no stream failed
        assert s["sent"] == s["matched"] == r["setup"]["calls"] + r["calls"] + r["cleanup"]["calls"]
        assert (s["unmatched"], s["late"]) == (0, 0)
        for name in LIFE_CYCLE:
            assert r["per_rpc"][name]["ok"] > 0, name

    async def test_open_loop_poisson_over_streams(self) -> None:
        """Open loop, Poisson arrivals at 150/s, over Connect: the rate is held."""
        async with live() as srv:
            r = await run_loadtest(options(srv, mode="connect", streams=3, window=4, rate=150.0,
                                           duration_s=2.0))
        assert_sane(r)
        assert r["rps"] == pytest.approx(150.0, rel=0.2)
        assert r["connect"]["sent"] == r["connect"]["matched"]


class TestChurn:
    async def test_agents_go_away_log_out_and_return(self) -> None:
        """During the run the server sees agents away and logged out, and back again."""
        async with live() as srv:
            ids = [f"churn-a{i}" for i in range(8)]
            seen: dict[str, list[int]] = {a: [] for a in ids}

            async def watch() -> None:
                end = time.monotonic() + 2.2  # the run lasts 2.5 s, then cleanup
                while time.monotonic() < end:
                    for agent_id in ids:
                        try:
                            st = await srv.acme.router.GetAgentState(
                                rpb.GetAgentStateRequest(agent_id=agent_id))
                        except grpc.aio.AioRpcError as err:  # not logged in yet
                            assert err.code() is grpc.StatusCode.NOT_FOUND
                            continue
                        seen[agent_id].append(st.status)
                    await asyncio.sleep(0.02)

            r, _ = await asyncio.gather(
                run_loadtest(options(srv, agents=8, churn_per_s=15.0, away_ms=200.0,
                                     id_prefix="churn-", duration_s=2.5, concurrency=4)),
                watch(),
            )
            after = [(await srv.acme.router.GetAgentState(
                rpb.GetAgentStateRequest(agent_id=a))).status for a in ids]
        assert_sane(r)
        statuses = {s for history in seen.values() for s in history}
        assert rpb.AGENT_STATUS_LOGGED_OUT in statuses
        assert rpb.AGENT_STATUS_AWAY in statuses
        came_back = [
            a for a, h in seen.items()
            if rpb.AGENT_STATUS_LOGGED_OUT in h
            and h.index(rpb.AGENT_STATUS_LOGGED_OUT) < len(h) - 1
            and any(s != rpb.AGENT_STATUS_LOGGED_OUT for s in
                    h[h.index(rpb.AGENT_STATUS_LOGGED_OUT):])
        ]
        assert came_back, "no agent was seen logging back in"
        ch = r["churn"]
        assert ch["logouts"] > 0 and ch["logins"] > 0 and ch["aways"] > 0 and ch["backs"] > 0
        assert after == [rpb.AGENT_STATUS_LOGGED_OUT] * 8  # the cleanup logged them out


class TestWrongKey:
    @pytest.mark.parametrize("mode", ["unary", "connect"])
    async def test_errors_are_counted_and_the_run_ends(self, mode: str) -> None:
        """Every call fails UNAUTHENTICATED, is counted as such, and the run still ends."""
        async with live() as srv:
            t0 = time.monotonic()
            r = await run_loadtest(options(srv, key="not-a-key-0123456789", mode=mode,
                                           requests=40, duration_s=20.0))
            wall = time.monotonic() - t0
        assert wall < 5.0
        assert r["ok"] == 0 and r["errors"] == {"UNAUTHENTICATED": 40}
        assert r["per_rpc"]["RouteContact"]["errors"] == {"UNAUTHENTICATED": 40}
        assert r["setup"]["errors"] == {"UNAUTHENTICATED": 12}
        assert r["cleanup"]["calls"] == 0  # the server took nothing: nothing to clean
        assert r["p50_ms"] is not None and r["p50_ms"] <= r["p99_ms"]


class TestBounds:
    async def test_requests_bound_a_closed_loop(self) -> None:
        """With requests=N, exactly N contacts reach the server, however many workers."""
        async with live() as srv:
            # No agents and endless patience: every contact waits, so the server's
            # own queue statistics count the arrivals.
            r = await run_loadtest(options(srv, agents=0, requests=120, concurrency=16,
                                           patience_ms=60_000.0, churn_per_s=0.0,
                                           duration_s=30.0, cleanup=False))
            waiting, _ = await waiting_and_logged_in(srv)
        assert r["requests"] == 120 and r["ok"] == 120
        assert waiting == 120
        assert r["per_rpc"]["RouteContact"]["modes"] == {"MODE_QUEUED": 120}
        assert r["elapsed_s"] < 10.0

    async def test_requests_bound_an_open_loop(self) -> None:
        """Open loop at 400/s with requests=60 stops after 60 arrivals (~0.15 s)."""
        async with live() as srv:
            r = await run_loadtest(options(srv, rate=400.0, arrival="fixed", requests=60,
                                           duration_s=30.0))
        assert r["requests"] == 60
        assert r["elapsed_s"] < 1.0

    async def test_duration_bounds_the_run(self) -> None:
        """duration_s=1 stops the arrivals after 1 s; calls in flight get their deadline."""
        async with live() as srv:
            t0 = time.monotonic()
            r = await run_loadtest(options(srv, duration_s=1.0, concurrency=8, deadline_ms=500.0))
            wall = time.monotonic() - t0
        assert_sane(r)
        assert 1.0 <= r["elapsed_s"] <= 1.0 + 0.5 + 0.1
        assert wall < 1.0 + 2.5  # setup, drain and cleanup included


class TestOptions:
    def test_bad_options_are_refused(self) -> None:
        """Nonsense options fail before any call, with every problem named."""
        with pytest.raises(ValueError, match="mode is unary or connect"):
            LoadOptions(mode="carrier-pigeon")
        with pytest.raises(ValueError, match="concurrency") as err:
            LoadOptions(concurrency=0, rate=-1.0)
        assert "rate" in str(err.value)
        parser = argparse.ArgumentParser()
        add_loadtest_parser(parser.add_subparsers())
        with pytest.raises(SystemExit):
            parser.parse_args(["loadtest", "--mode", "carrier-pigeon"])
        ns = parser.parse_args(["loadtest", "--concurrency", "0"])
        assert main(ns) == 2

    def test_parser_fills_the_options(self) -> None:
        """Every option of the brief parses into LoadOptions."""
        parser = argparse.ArgumentParser()
        add_loadtest_parser(parser.add_subparsers())
        ns = parser.parse_args([
            "loadtest", "--target", "127.0.0.1:1", "--key", "k", "--duration-s", "3",
            "--requests", "9", "--concurrency", "5", "--rate", "50", "--mode", "connect",
            "--streams", "2", "--window", "7", "--agents", "11", "--queues", "6",
            "--churn-per-s", "0.5", "--deadline-ms", "250", "--seed", "3", "--json",
        ])
        o = LoadOptions.of(ns)
        assert (o.target, o.key, o.duration_s, o.requests, o.concurrency, o.rate) == (
            "127.0.0.1:1", "k", 3.0, 9, 5, 50.0)
        assert (o.mode, o.streams, o.window, o.agents, o.queues) == ("connect", 2, 7, 11, 6)
        assert (o.churn_per_s, o.deadline_ms, o.seed, o.json, o.loop) == (
            0.5, 250.0, 3, True, "open")
        assert ns.run is main


class TestCommandLine:
    @pytest.mark.parametrize("as_json", [False, True])
    async def test_command_prints_the_report(self, as_json: bool) -> None:
        """`loadtest` in its own process prints the table, or the JSON report."""
        async with live() as srv:
            script = ("import argparse, sys\n"
                      "from pairline.loadtest import add_loadtest_parser\n"
                      "p = argparse.ArgumentParser(prog='pairline')\n"
                      "add_loadtest_parser(p.add_subparsers())\n"
                      "ns = p.parse_args(sys.argv[1:])\n"
                      "raise SystemExit(ns.run(ns))\n")
            args = ["loadtest", "--target", srv.server.address, "--key", KEYS["acme"],
                    "--requests", "200", "--duration-s", "5", "--agents", "10",
                    "--handle-ms", "20", "--wrap-ms", "10"]
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", script, *args, *(["--json"] if as_json else []),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        text = out.decode()
        if as_json:
            r = json.loads(text)
            assert r["requests"] == 200 and r["ok"] > 0
            assert 0 < r["p50_ms"] <= r["p99_ms"]
        else:
            assert "RouteContact" in text and "p99.9" in text and "status codes: OK" in text


class TestReplicas:
    async def test_calls_spread_over_targets_fail_over_from_a_dead_one(self) -> None:
        """Two targets, one of them a port nobody listens on: every call is answered
        by the live one (UNAVAILABLE fails over within the deadline), the failovers
        are counted, and the ledger finds no double assignment and nothing lost."""
        from support import free_port

        async with live() as srv:
            dead = f"127.0.0.1:{free_port()}"
            timeline: list[tuple[float, str, str, float, int, bool]] = []
            r = await run_loadtest(options(srv, target=f"{dead},{srv.server.address}",
                                           duration_s=1.5, concurrency=4),
                                   timeline=timeline)
        assert_sane(r)
        spread = r["spread"]
        assert spread["targets"] == 2 and spread["failovers"] > 0
        assert spread["calls"][0] == spread["failovers"]  # every call to it failed over
        ledger = r["ledger"]
        assert ledger["confirmed"] > 0
        assert (ledger["double_assignments"], ledger["lost"]) == (0, 0), ledger["samples"]
        assert len(timeline) == r["calls"] and any(e[5] for e in timeline)
        assert {e[1] for e in timeline} >= {"RouteContact", "ConfirmDecision", "EndContact"}

    def test_several_targets_need_unary(self) -> None:
        with pytest.raises(ValueError, match="several targets need mode unary"):
            LoadOptions(target="127.0.0.1:1,127.0.0.1:2", mode="connect")

    def test_the_ledger_sees_a_double_assignment_and_a_lost_contact(self) -> None:
        """Fed by hand: one agent (voice capacity 1) confirmed for two contacts, and
        a contact acknowledged then unknown to the server."""
        from pairline._proto.pairline.v1 import common_pb2 as cpb
        from pairline.loadtest import Ledger

        ledger = Ledger(lambda agent, channel: 1)
        for cid, did in (("c1", "d1"), ("c2", "d2")):
            req = rpb.RouteContactRequest(contact_id=cid, queue="q", channel=cpb.CHANNEL_VOICE)
            d = cpb.Decision(decision_id=did, contact_id=cid, agent_id="a1",
                             channel=cpb.CHANNEL_VOICE)
            ledger.answered("RouteContact", req, "OK", d, False)
            ledger.answered("ConfirmDecision", rpb.ConfirmDecisionRequest(decision_id=did),
                            "OK", None, False)
        assert ledger.summary()["double_assignments"] == 1
        end = rpb.EndContactRequest(contact_id="c1", reason=rpb.END_REASON_HANDLED)
        ledger.hang_up("c1")
        ledger.answered("EndContact", end, "NOT_FOUND", None, False)
        assert ledger.summary()["lost"] == 1
        # After a failover the same answer is no evidence: the first try may have ended it.
        ledger.hang_up("c2")
        ledger.answered("EndContact", rpb.EndContactRequest(contact_id="c2"), "NOT_FOUND",
                        None, True)
        assert ledger.summary()["lost"] == 1

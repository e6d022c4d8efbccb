"""The fuzzing of ``test_fuzz`` on the Redis store, with a second replica watching.

Two servers share one real Redis (and one fake clock): ``A`` takes every request,
``B`` only follows the change feed. For every request, random or malformed:

* the answer is never INTERNAL or UNKNOWN;
* a rejected request changes nothing: neither A's routing state nor any Redis key
  of the caller's tenant (the digest is every key's ``DUMP``), and no other
  tenant's keys change at all;
* the routing invariants hold in A's memory.

Random switch event sequences over ``Connect`` check in addition that no contact
is lost or invented and every decision is recorded in Redis, and after each
sequence that B, once it has applied the feed, holds exactly A's routing state:
a replica that only follows the feed agrees with the one that made the changes.

Each sequence works on agents, contacts and queues of its own (ids prefixed),
since the shared state cannot be reset under a running replica. Case counts are a
fraction of ``test_fuzz``'s (scaled by ``PAIRLINE_FUZZ_SCALE`` too).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from support import RedisProcess
from test_fuzz import (
    METHODS,
    SEQ_TENANTS,
    TEMPLATES,
    TENANT_KEYS,
    Lockstep,
    ThreadServer,
    check_call,
    event_of,
    fuzz_config,
    fuzz_settings,
    invariant_problems,
    messages,
    mutated,
    routing_digest,
    switch_steps,
    upsert_profiles,
)
from test_profiles import model_file

from pairline._proto.pairline.v1 import profiles_pb2_grpc, router_pb2_grpc
from pairline._proto.pairline.v1 import router_pb2 as rpb
from pairline.logs import configure
from pairline.testing import FakeClock

pytestmark = pytest.mark.slow

CASES: Counter[str] = Counter()


@dataclasses.dataclass
class Pair:
    a: ThreadServer
    b: ThreadServer
    r: redis.Redis


def redis_digest(r: redis.Redis, tenant: str) -> tuple[Any, ...]:
    """Every Redis key of ``tenant`` (hash tag ``{tenant}``) with its serialized value."""
    keys = sorted(r.scan_iter(match=f"*{{{tenant}}}*", count=1000))
    values = r.pipeline(transaction=False)
    for k in keys:
        values.dump(k)
    return tuple(zip(keys, values.execute(), strict=True))


@pytest.fixture(scope="module")
def pair(redis_server: RedisProcess) -> Iterator[Pair]:
    configure("warning", json=True, cache=False)
    r = redis.Redis(port=redis_server.port)
    r.flushall()
    clock = FakeClock()
    cfg = dataclasses.replace(fuzz_config(), redis_url=redis_server.url, redis_timeout_s=2.0)
    a = ThreadServer(cfg, clock)
    b: ThreadServer | None = None
    try:
        a.stored = lambda t: redis_digest(r, t)
        for name in ("acme", "globex", *SEQ_TENANTS):
            a.call(a.server.service.upload_model(name, model_file("m1"), True))
        b = ThreadServer(cfg, clock)
        yield Pair(a, b, r)
    finally:
        if b is not None:
            b.stop()
        a.stop()
        configure("info", json=True, cache=False)
        print(f"redis fuzz cases: {dict(CASES)} total={sum(CASES.values())}")


def changes(before: tuple[Any, ...], after: tuple[Any, ...]) -> list[Any]:
    """What differs between two digests, part by part (for failure messages)."""
    out: list[Any] = []
    for i, (x, y) in enumerate(zip(before, after, strict=True)):
        if x != y:
            if isinstance(x, tuple) and isinstance(y, tuple) and x != () != y \
                    and isinstance(x[0], tuple):
                out.append((i, "gone", sorted(set(x) - set(y), key=repr)[:5],
                            "new", sorted(set(y) - set(x), key=repr)[:5]))
            else:
                out.append((i, x, y))
    return out


def n_of(examples: int) -> Any:
    return fuzz_settings(examples)


class TestEveryRpcOnRedis:
    @pytest.mark.parametrize("path,m", [pytest.param(p, m, id=p.split("/", 1)[1])
                                        for p, m in METHODS])
    def test_random_requests(self, pair: Pair, path: str, m: Any) -> None:
        """Random valid-or-not requests to every RPC on the Redis store: never
        INTERNAL/UNKNOWN; a rejected request changes no Redis key and no routing state;
        other tenants never change; invariants hold."""
        inputs = messages(m.input_type)
        template = TEMPLATES.get(m.input_type.full_name)
        if template is not None:
            inputs = st.one_of(inputs, mutated(template))
        requests = st.lists(inputs, min_size=0 if m.client_streaming else 1,
                            max_size=3 if m.client_streaming else 1)

        @n_of(40)
        @given(reqs=requests, who=st.sampled_from(["acme", "globex"]))
        def run(reqs: list[Any], who: str) -> None:
            check_call(pair.a, path, m, reqs, who)
            CASES["rpc"] += 1

        run()


_seq = itertools.count()
REPLICATED = ("agents", "contacts", "waiting pools", "agent vectors", "waiting count",
              "reservations", "model")


def replicated(ts: ThreadServer, tenant: str) -> tuple[Any, ...]:
    """The part of ``routing_digest`` every replica must agree on."""
    agents, contacts, pools, vectors, _queues, n_waiting, reservations, scorer = \
        routing_digest(ts, tenant)
    return agents, contacts, pools, vectors, n_waiting, reservations, scorer


def own_ids(steps: list[tuple[str, Any]], tag: str) -> list[tuple[str, Any]]:
    """The same steps on agents, contacts and queues of this sequence only."""
    def q(x: str) -> str:
        return f"{tag}{x}"

    out: list[tuple[str, Any]] = []
    for kind, p in steps:
        if kind == "route":
            p = {**p, "contact_id": q(p["contact_id"]), "queue": q(p["queue"]),
                 "excluded_agent_ids": [q(x) for x in p["excluded_agent_ids"]],
                 "preferred_agent_ids": [q(x) for x in p["preferred_agent_ids"]]}
        elif kind == "ready":
            p = q(p)
        elif kind == "state":
            p = {**p, "agent_id": q(p["agent_id"]), "queues": [q(x) for x in p["queues"]]}
        elif kind == "end":
            p = (q(p[0]), *p[1:])
        elif kind == "profiles":
            p = (p[0], [(q(a), v) for a, v in p[1]])
        out.append((kind, p))
    return out


class TestConnectSequencesOnRedis:
    def test_random_event_sequences(self, pair: Pair) -> None:
        """Random switch event sequences over Connect on the Redis store: one reply per
        event in order, never INTERNAL/UNKNOWN, a refused event changes nothing,
        invariants hold after every event, no contact lost or invented, every decision
        recorded in Redis, and the follower replica ends with the same routing state."""
        a, b = pair.a, pair.b
        profiles = profiles_pb2_grpc.ProfilesStub(a.channel)
        router = router_pb2_grpc.RouterStub(a.channel)

        @n_of(150)
        @given(steps=switch_steps(), who=st.sampled_from(list(SEQ_TENANTS)))
        def run(steps: list[tuple[str, Any]], who: str) -> None:
            tag = f"x{next(_seq)}-"
            steps = own_ids(steps, tag)
            service = a.server.service
            stream = Lockstep(a, who)
            md = (("authorization", f"Bearer {TENANT_KEYS[who]}"),)
            decisions: list[str] = []
            live: set[str] = set()
            try:
                for i, (kind, p) in enumerate(steps):
                    if kind == "tick":
                        a.clock.advance(p)
                        a.call(service.expire_all())
                        continue
                    if kind == "profiles":
                        upsert_profiles(profiles, md, p, i)
                        continue
                    ev = event_of(kind, p, decisions, i)
                    before = a.run(lambda: (replicated(a, who), redis_digest(pair.r, who)))
                    reply = stream.send(ev)
                    assert reply.request_id == ev.request_id
                    which = reply.WhichOneof("reply")
                    if which == "error":
                        assert reply.error.code not in (13, 2), (ev, reply)
                        after = a.run(lambda: (replicated(a, who), redis_digest(pair.r, who)))
                        assert after == before, (ev, reply.error, changes(before[0], after[0]),
                                                 changes(before[1], after[1]))
                        CASES[f"event refused {reply.error.code}"] += 1
                        continue
                    sent = ev.WhichOneof("event")
                    if sent == "route_contact":
                        live.add(ev.route_contact.contact_id)
                    if sent == "end_contact":
                        live.discard(ev.end_contact.contact_id)
                    if which == "decision" and reply.decision.decision_id:
                        decisions.append(reply.decision.decision_id)
                        live.add(reply.decision.contact_id)
                    problems = a.run(lambda: invariant_problems(service.tenants[who].routing))
                    assert not problems, (ev, problems)
                    CASES["event"] += 1
                assert stream.close() is grpc.StatusCode.OK
            finally:
                stream.close()
            present = a.run(lambda: {c for c in service.tenants[who].routing.contacts
                                     if c.startswith(tag)})
            mine = {c for c in live if c.startswith(tag)}
            assert present == mine, f"lost {mine - present}, invented {present - mine}"
            for did in decisions:
                rec = a.call(service.store.get_decision(who, did, a.clock.now()))
                assert rec is not None, f"decision {did} not recorded in Redis"
            # The follower, once it has applied the feed, holds what A holds (but
            # for the queue index, which each replica builds as it routes).
            b.call(b.server.service._feed.catch_up(who))
            held_b = b.run(lambda: replicated(b, who))
            held_a = a.run(lambda: replicated(a, who))
            for part, x, y in zip(REPLICATED, held_a, held_b, strict=True):
                assert x == y, f"replica B differs from A in {part}"
            # Leave the tenant as found: this sequence's contacts end (the tenant's
            # cap on waiting contacts would otherwise refuse later sequences' routes).
            for cid in sorted(mine):
                router.EndContact(rpb.EndContactRequest(
                    contact_id=cid, reason=rpb.END_REASON_ABANDONED), metadata=md, timeout=10)
            CASES["Connect.sequence"] += 1

        run()


def test_zz_redis_cases_ran(pair: Pair) -> None:
    """The module ran its cases and both replicas still serve."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    for ts in (pair.a, pair.b):
        resp = health_pb2_grpc.HealthStub(ts.channel).Check(health_pb2.HealthCheckRequest(),
                                                            timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    print(f"redis fuzz cases: {dict(CASES)}")

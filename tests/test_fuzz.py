"""Property-based fuzzing of every RPC against one real server (hypothesis).

One server per module runs in a thread of its own (its own event loop); the
tests call it with ordinary blocking stubs. For every request, random or
malformed:

* the answer is never INTERNAL or UNKNOWN, and the server keeps serving;
* a rejected request (any error) changes nothing, in the caller's tenant or
  any other (state digests taken on the server's loop before and after);
* the routing invariants hold: each contact held by at most one agent, agents'
  in-use counts equal what they hold, waiting pools equal the waiting contacts,
  every reservation known to its agent and its contact.

Random event sequences over ``Connect`` (lockstep: one event, one reply) check
in addition: one reply per event in order, no decision beyond an agent's
capacity, no contact lost or invented, every decision recorded, and a rejected
event changes nothing.

Case counts scale with ``PAIRLINE_FUZZ_SCALE`` (1 = the CI budget, >=10,000
cases); derandomized so CI runs are repeatable; ``make fuzz`` runs more with
random seeds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import queue
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import KEYS, tenant
from test_profiles import model_file

from pairline._proto.pairline.v1 import insights_pb2, privacy_pb2, profiles_pb2, router_pb2
from pairline._proto.pairline.v1 import router_pb2 as rpb
from pairline.config import Settings, hash_api_key
from pairline.domain import Channel
from pairline.logs import configure
from pairline.routing import ContactState, TenantRouting
from pairline.server import PairlineServer
from pairline.service import TenantRuntime
from pairline.testing import FakeClock

SCALE = float(os.environ.get("PAIRLINE_FUZZ_SCALE", "1"))
RANDOM = os.environ.get("PAIRLINE_FUZZ_RANDOM", "") not in ("", "0")
# Tenants for event sequences, one per policy family; reset before each sequence.
SEQ_TENANTS: dict[str, dict[str, Any]] = {
    "seq": {"policy": "greedy", "batch": True},
    "seqd": {"policy": "diagonal", "benchmark": True, "slot_s": 5.0, "stabilise_s": 1.0,
             "relax_steps": ((2.0, 40), (10.0, 0)), "skew": 0.5, "wait_weight": 1.0},
    "seqm": {"policy": "diagonal", "monitor": True, "batch": False},
    "seqb": {"policy": "baseline"},
}
BAD = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
CODE_NAMES = {c.value[0]: c.name for c in grpc.StatusCode}
CASES: Counter[str] = Counter()  # hypothesis examples, by test
EVENTS: Counter[str] = Counter()  # events sent on Connect streams
ANSWERS: Counter[str] = Counter()  # status codes answered (stream events: error replies)


def n(examples: int) -> int:
    return max(1, int(examples * SCALE))


def fuzz_settings(examples: int) -> Callable[[Any], Any]:
    return settings(
        max_examples=n(examples),
        deadline=None,
        derandomize=not RANDOM,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


# ------------------------------------------------------------------ the server
class ThreadServer:
    """A PairlineServer on an event loop in its own thread."""

    def __init__(self, cfg: Settings, clock: FakeClock | None = None) -> None:
        self.clock = clock or FakeClock()
        # What the store holds for one tenant (a digest; the embedded store by default).
        self.stored: Callable[[str], tuple[Any, ...]] = lambda t: stored_digest(self, t)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def make() -> PairlineServer:
            server = PairlineServer(cfg, clock=self.clock)
            await server.start()
            return server

        self.server = self.call(make())
        self.channel = grpc.insecure_channel(self.server.address)

    def call(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def run(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on the server's loop, between two calls (a consistent view)."""
        async def inside() -> Any:
            return fn()

        return self.call(inside())

    def stop(self) -> None:
        self.channel.close()
        self.call(self.server.stop(0.2))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def fuzz_config() -> Settings:
    return Settings(
        listen="127.0.0.1:0",
        grace_s=0.5,
        sweep_interval_s=3600,  # the fake clock moves only when a test says so
        tenants=(
            tenant("acme", policy="diagonal", benchmark=True, slot_s=60.0, stabilise_s=0.0),
            tenant("globex", monitor=True, policy="greedy"),
            *(dataclasses.replace(tenant("acme", **kw), name=name,
                                  api_key_sha256=(hash_api_key(f"{name}-key-0123456789"),),
                                  secret=f"{name}-secret-0123456789", max_waiting=50)
              for name, kw in SEQ_TENANTS.items()),
        ),
    )


@pytest.fixture(scope="module")
def ts() -> Iterator[ThreadServer]:
    configure("warning", json=True, cache=False)  # 10,000 rejections need no log lines
    server = ThreadServer(fuzz_config())
    try:
        for name in ("acme", "globex", *SEQ_TENANTS):
            server.call(server.server.service.upload_model(name, model_file("m1"), True))
        yield server
    finally:
        server.stop()
        configure("info", json=True, cache=False)
        print(f"fuzz cases: {dict(CASES)} total={sum(CASES.values())} events={dict(EVENTS)}")


# ----------------------------------------------------------------- state
def digest(ts: ThreadServer, tenant_name: str) -> tuple[Any, ...]:
    """Everything a request could change for one tenant (read on the server's loop)."""
    return (*routing_digest(ts, tenant_name), ts.stored(tenant_name))


def routing_digest(ts: ThreadServer, tenant_name: str) -> tuple[Any, ...]:
    """One tenant's routing state as the server holds it in memory."""
    rt = ts.server.service.tenants[tenant_name]
    r = rt.routing
    agents = tuple(sorted(
        (a.agent_id, a.presence, tuple(sorted(a.queues.items())), tuple(a.capacity),
         tuple(a.in_use), a.wrap_until, a.idle_since, tuple(sorted(a.reservations.items())),
         tuple(sorted(a.connected.items())))
        for a in r.agents.values()))
    contacts = tuple(sorted(
        (c.contact_id, int(c.state), c.queue, int(c.channel), c.priority,
         c.decision.decision_id if c.decision else "")
        for c in r.contacts.values()))
    pools = tuple(sorted((k, tuple(v)) for k, v in r.waiting.items() if v))
    vectors = tuple(sorted((k, v.tobytes()) for k, v in r.agent_vectors.items()))
    scorer = rt.scorer.version if rt.scorer is not None else ""
    return (agents, contacts, pools, vectors, tuple(sorted(r.queues)), r.n_waiting,
            tuple(sorted(r.reservations)), scorer)


def stored_digest(ts: ThreadServer, tenant_name: str) -> tuple[Any, ...]:
    """What the embedded store holds for one tenant."""
    st_ = ts.server.service.store._tenants.get(tenant_name)  # type: ignore[attr-defined]
    if st_ is None:
        return ()
    return (
        tuple(sorted((k, row.version, row.source_time_ms, row.vector.tobytes())
                     for k, (row, _) in st_.customers.items())),
        tuple(sorted((k, row.version, row.source_time_ms, row.vector.tobytes())
                     for k, row in st_.agents.items())),
        tuple(sorted(st_.models)), st_.active,
        tuple((k, tuple(sorted(v.outcomes.items()))) for k, v in st_.decisions.items()),
    )


def all_digests(ts: ThreadServer) -> dict[str, tuple[Any, ...]]:
    return ts.run(lambda: {t: digest(ts, t) for t in ts.server.service.tenants})


def invariant_problems(r: TenantRouting) -> list[str]:
    """The routing invariants of one tenant; an empty list when they hold."""
    out: list[str] = []
    held: dict[str, str] = {}
    for a in r.agents.values():
        counts = [0] * len(a.in_use)
        for did, cid in a.reservations.items():
            c = r.contacts.get(cid)
            if c is None or c.state is not ContactState.RESERVED or c.decision is None \
                    or c.decision.decision_id != did:
                out.append(f"{a.agent_id}: reservation {did} of {cid} does not match the contact")
                continue
            if r.reservations.get(did) is None or r.reservations[did].agent_id != a.agent_id:
                out.append(f"reservation {did} unknown to the tenant")
            if cid in held:
                out.append(f"contact {cid} held by {held[cid]} and {a.agent_id}")
            held[cid] = a.agent_id
            counts[c.channel - 1] += 1
        for cid, did in a.connected.items():
            c = r.contacts.get(cid)
            if c is None or c.state is not ContactState.CONNECTED or c.decision is None \
                    or c.decision.decision_id != did:
                out.append(f"{a.agent_id}: connected {cid} ({did}) does not match the contact")
                continue
            if cid in held:
                out.append(f"contact {cid} held by {held[cid]} and {a.agent_id}")
            held[cid] = a.agent_id
            counts[c.channel - 1] += 1
        if counts != list(a.in_use):
            out.append(f"{a.agent_id}: in_use {a.in_use} but holds {counts}")
    waiting = 0
    for c in r.contacts.values():
        if c.state is ContactState.WAITING:
            waiting += 1
            pool = r.waiting.get((c.queue, c.channel))
            if pool is None or c.key not in pool:
                out.append(f"waiting contact {c.contact_id} not in its pool")
            if c.contact_id in held:
                out.append(f"waiting contact {c.contact_id} held by {held[c.contact_id]}")
        elif c.contact_id not in held:
            out.append(f"contact {c.contact_id} ({c.state.name}) held by no agent")
    pooled = sum(len(p) for p in r.waiting.values())
    if not waiting == pooled == r.n_waiting:
        out.append(f"waiting: {waiting} contacts, {pooled} pooled, n_waiting {r.n_waiting}")
    held_decisions = {d for a in r.agents.values() for d in a.reservations}
    if held_decisions != set(r.reservations):
        out.append("tenant reservations differ from the agents' reservations")
    return out


def assert_invariants(ts: ThreadServer) -> None:
    problems = ts.run(lambda: {t: invariant_problems(rt.routing)
                               for t, rt in ts.server.service.tenants.items()})
    assert not any(problems.values()), problems


# ------------------------------------------------------------ request strategies
IDS = ["a1", "a2", "a3", "c1", "c2", "c3", "sales", "billing", "converted", "m1", "k1", ""]
WEIRD = ["\x00", "é" * 40, "x" * 129, "x" * 300, " ", "a1 ", "🙂", "\u202e", "../../etc",
         "%s%n", "a" * 5000, "NaN", "-1", "\n"]
_rng = np.random.default_rng(7)
_valid = model_file("fz1")
MODELS = [_valid, model_file("fz2", customer_dim=5), model_file("fz3", agent_dim=9),
          _valid[: len(_valid) // 2], _valid[:30], b"PK\x03\x04" + b"\x00" * 40, b"",
          *[bytes(np.where(_rng.random(len(_valid)) < 0.002,
                           _rng.integers(0, 256, len(_valid)),
                           np.frombuffer(_valid, np.uint8)).astype(np.uint8))
            for _ in range(8)],
          model_file("fz4", W=np.full((4, 3), np.inf, np.float32)),
          model_file("fz5", W=np.full((4, 3), np.nan, np.float32))]

INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def scalar(f: FieldDescriptor) -> st.SearchStrategy[Any]:
    t = f.type
    if t == FieldDescriptor.TYPE_STRING:
        ids = st.sampled_from(IDS)  # weighted: most strings name things that exist
        return st.one_of(ids, ids, ids, ids, st.sampled_from(WEIRD), st.text(max_size=12))
    if t == FieldDescriptor.TYPE_BYTES:
        return st.one_of(st.sampled_from(MODELS), st.binary(max_size=64))
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        width = 32 if t == FieldDescriptor.TYPE_FLOAT else 64
        return st.one_of(st.sampled_from([0.0, 1.0, -1.0, 0.5, 1e308, -1e308, 3.5e38]),
                         st.floats(width=width))
    if t == FieldDescriptor.TYPE_ENUM:
        numbers = [v.number for v in f.enum_type.values]
        valid = st.sampled_from([n for n in numbers if n] or numbers)
        return st.one_of(valid, valid, valid, st.sampled_from(numbers),
                         st.integers(-3, 1000), st.just(2**31 - 1))
    lo, hi = INT_RANGES[t]
    edges = [v for v in (0, 1, -1, 2, 5, 10, 30, 100, 1_700_000_000_000, lo, hi) if lo <= v <= hi]
    small = st.integers(max(lo, 0), min(hi, 100))
    return st.one_of(small, small, st.sampled_from(edges), st.integers(lo, hi))


def field_values(f: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if f.message_type is not None and f.message_type.GetOptions().map_entry:
        key_f, val_f = f.message_type.fields_by_name["key"], f.message_type.fields_by_name["value"]
        return st.dictionaries(scalar(key_f), value_of(val_f, depth + 1), max_size=4)
    one = value_of(f, depth)
    if f.is_repeated:
        return st.lists(one, max_size=5)
    return one


def value_of(f: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if f.message_type is not None:
        return messages(f.message_type, depth + 1)
    return scalar(f)


_cache: dict[tuple[str, int], st.SearchStrategy[Any]] = {}


def messages(desc: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Any message of type ``desc``: each field set or not, values valid or not."""
    key = (desc.full_name, min(depth, 3))
    if key in _cache:
        return _cache[key]
    cls = _classes[desc.full_name]
    if depth > 3:
        strat: st.SearchStrategy[Message] = st.builds(cls)
    else:
        parts = {f.name: st.one_of(st.none(), *[field_values(f, depth)] * 2)
                 for f in desc.fields}

        def build(values: dict[str, Any]) -> Message:
            msg = cls()
            for name, v in values.items():
                if v is not None:
                    put(msg, desc.fields_by_name[name], v)
            return msg

        strat = st.fixed_dictionaries(parts).map(build)
    _cache[key] = strat
    return strat


def put(msg: Message, f: FieldDescriptor, v: Any) -> None:
    """Set field ``f`` of ``msg`` to a value drawn by :func:`field_values`."""
    target = getattr(msg, f.name)
    if f.message_type is not None and f.message_type.GetOptions().map_entry:
        for k, val in v.items():
            if isinstance(val, Message):
                target[k].CopyFrom(val)
            else:
                target[k] = val
    elif f.is_repeated:
        if f.message_type is not None:
            for item in v:
                target.add().CopyFrom(item)
        else:
            target.extend(v)
    elif f.message_type is not None:
        target.CopyFrom(v)
    else:
        setattr(msg, f.name, v)


def templates() -> dict[str, Message]:
    """A valid request of each kind (by full message name): mutated one or two fields
    at a time, they reach past validation into the service."""
    from pairline._proto.pairline.v1 import insights_pb2 as ipb
    from pairline._proto.pairline.v1 import privacy_pb2 as xpb
    from pairline._proto.pairline.v1 import profiles_pb2 as ppb

    route = rpb.RouteContactRequest(contact_id="c1", queue="sales", channel=1, priority=1,
                                    customer_key="k1", context={"x": 0.5})
    login = rpb.SetAgentStateRequest(
        agent_id="a1", status=rpb.AGENT_STATUS_AVAILABLE,
        queues=[rpb.QueueMembership(queue="sales", proficiency=50)],
        capacities=[rpb.ChannelCapacity(channel=1, capacity=1),
                    rpb.ChannelCapacity(channel=2, capacity=2)])
    cprof = ppb.CustomerProfile(customer_key="k1", vector=[0.1, 0.2, 0.3, 0.4], version=1,
                                source_time_ms=1_700_000_000_000)
    out: list[Message] = [
        route, login,
        rpb.AgentReadyRequest(agent_id="a1"), rpb.GetAgentStateRequest(agent_id="a1"),
        rpb.ConfirmDecisionRequest(decision_id="d1"),
        rpb.ReleaseDecisionRequest(decision_id="d1", reason=1),
        rpb.EndContactRequest(contact_id="c1", reason=rpb.END_REASON_HANDLED),
        rpb.ReportOutcomeRequest(decision_id="d1", outcomes={"converted": 1.0}),
        rpb.SwitchEvent(request_id="r", route_contact=route),
        rpb.SwitchEventBatch(events=[rpb.SwitchEvent(request_id="r", set_agent_state=login),
                                     rpb.SwitchEvent(request_id="s", route_contact=route)]),
        cprof, ppb.CustomerProfileBatch(profiles=[cprof]),
        ppb.AgentProfileBatch(profiles=[ppb.AgentProfile(
            agent_id="a1", vector=[0.1, 0.2, 0.3], version=1, source_time_ms=1)]),
        ppb.UploadModelRequest(model=model_file("m2"), activate=True),
        ppb.ActivateModelRequest(version="m1"),
        ipb.GetBenchmarkReportRequest(outcome="converted", queue="sales"),
        ipb.ExportHistoryRequest(outcome="converted"),
        ipb.GetQueueStatsRequest(queue="sales"),
        xpb.OptOutRequest(customer_key="k1"),
    ]
    return {m.DESCRIPTOR.full_name: m for m in out}


@st.composite
def mutated(draw: Any, template: Message) -> Message:
    """``template`` with up to two fields replaced by random values or cleared."""
    msg = type(template)()
    msg.CopyFrom(template)
    fields = list(template.DESCRIPTOR.fields)
    for _ in range(draw(st.integers(0, 2))):
        f = draw(st.sampled_from(fields))
        value = draw(st.one_of(st.none(), field_values(f, 1)))
        msg.ClearField(f.name)
        if value is not None:
            put(msg, f, value)
    return msg


_classes: dict[str, type[Message]] = {}
METHODS: list[tuple[str, Any]] = []  # (/pkg.Service/Method, MethodDescriptor)
for _pb in (router_pb2, profiles_pb2, insights_pb2, privacy_pb2):
    for _name, _cls in vars(_pb).items():
        if isinstance(_cls, type) and issubclass(_cls, Message):
            _classes[_cls.DESCRIPTOR.full_name] = _cls
    for _svc in _pb.DESCRIPTOR.services_by_name.values():
        for _m in _svc.methods:
            METHODS.append((f"/{_svc.full_name}/{_m.name}", _m))
from pairline._proto.pairline.v1 import common_pb2 as _cpb  # noqa: E402

for _name, _cls in vars(_cpb).items():
    if isinstance(_cls, type) and issubclass(_cls, Message):
        _classes[_cls.DESCRIPTOR.full_name] = _cls

TEMPLATES = templates()
READS = {"GetAgentState", "GetQueueStats", "GetModelInfo", "GetBenchmarkReport",
         "ExportHistory", "GetDeletion", "ListDeletions"}
TENANT_KEYS = {"acme": KEYS["acme"], "globex": KEYS["globex"],
               **{name: f"{name}-key-0123456789" for name in SEQ_TENANTS}}


def invoke(ts: ThreadServer, path: str, m: Any, requests: list[Any], key: str,
           raw: bool = False) -> tuple[grpc.StatusCode, list[Any]]:
    """Call one method; a list of requests for client streams. ``raw``: requests are
    bytes sent as they are."""
    md = (("authorization", f"Bearer {key}"),)
    ser = (lambda b: b) if raw else (lambda x: x.SerializeToString())
    out_cls = _classes[m.output_type.full_name]
    kind = ("stream" if m.client_streaming else "unary") + "_" + \
        ("stream" if m.server_streaming else "unary")
    rpc = getattr(ts.channel, kind)(path, request_serializer=ser,
                                    response_deserializer=out_cls.FromString)
    try:
        arg = iter(requests) if m.client_streaming else requests[0]
        result = rpc(arg, metadata=md, timeout=20)
        replies = list(result) if m.server_streaming else [result]
        return grpc.StatusCode.OK, replies
    except grpc.RpcError as err:
        return err.code(), [err.details()]  # type: ignore[attr-defined]


def check_call(ts: ThreadServer, path: str, m: Any, requests: list[Any], who: str,
               raw: bool = False) -> grpc.StatusCode:
    # The deletion worker carries out tickets in the background; finish what earlier
    # requests left it, so its work is not taken for this request's doing.
    ts.call(ts.server.service.privacy.run_deletions())
    before = all_digests(ts)
    code, out = invoke(ts, path, m, requests, TENANT_KEYS[who], raw)
    assert code not in BAD, (path, code, out, requests)
    after = all_digests(ts)
    name = path.rsplit("/", 1)[1]
    for t in before:
        if t != who:
            assert after[t] == before[t], f"{path} by {who} changed tenant {t}"
    partial = m.client_streaming and len(requests) > 1  # earlier batches stay applied
    if (code is not grpc.StatusCode.OK and not partial) or name in READS:
        assert after[who] == before[who], f"{path} ({code.name}) changed {who}: {out}"
    assert_invariants(ts)
    if not raw:
        CASES[name] += 1
    ANSWERS[("malformed " if raw else "") + code.name] += 1
    return code


class TestEveryRpc:
    @pytest.mark.parametrize("path,m", [pytest.param(p, m, id=p.split("/", 1)[1])
                                        for p, m in METHODS])
    def test_random_requests(self, ts: ThreadServer, path: str, m: Any) -> None:
        """Random valid-or-not requests to every RPC: never INTERNAL/UNKNOWN, a
        rejected request changes nothing, other tenants never change, invariants hold."""
        inputs = messages(m.input_type)
        template = TEMPLATES.get(m.input_type.full_name)
        if template is not None:
            inputs = st.one_of(inputs, mutated(template))
        requests = st.lists(inputs, min_size=0 if m.client_streaming else 1,
                            max_size=3 if m.client_streaming else 1)

        @fuzz_settings(350)
        @given(reqs=requests, who=st.sampled_from(["acme", "globex"]))
        def run(reqs: list[Any], who: str) -> None:
            check_call(ts, path, m, reqs, who)

        run()

    def test_malformed_bytes(self, ts: ThreadServer) -> None:
        """Bytes that are not the method's message (or barely are): INVALID_ARGUMENT or
        an ordinary answer, never INTERNAL; nothing changes when refused."""
        @fuzz_settings(1500)
        @given(i=st.integers(0, len(METHODS) - 1),
               data=st.lists(st.one_of(st.binary(max_size=48),
                                       st.sampled_from([b"\xff", b"\x0a\xff\xff\xff\xff\x0f",
                                                        b"\x0a\x05ab", b"\x12\x02\xc3\x28",
                                                        b"\x08\x80\x80\x80\x80\x80\x80\x80\x80"
                                                        b"\x80\x80"])),
                             min_size=1, max_size=2))
        def run(i: int, data: list[bytes]) -> None:
            path, m = METHODS[i]
            reqs = data if m.client_streaming else data[:1]
            check_call(ts, path, m, reqs, "acme", raw=True)
            CASES["malformed"] += 1

        run()


    def test_random_credentials(self, ts: ThreadServer) -> None:
        """Random authorization headers (none, several, near-misses of a real key):
        UNAUTHENTICATED or, for exactly a valid key, an answer; nothing changes when
        refused."""
        from pairline._proto.pairline.v1 import router_pb2_grpc

        stub = router_pb2_grpc.RouterStub(ts.channel)
        real = KEYS["acme"]
        printable = st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=60)

        @fuzz_settings(300)
        @given(values=st.lists(st.one_of(
            printable, st.builds(lambda t: f"Bearer {t}", printable),
            st.sampled_from([f"Bearer {real}", f"bearer {real}", f"Bearer  {real}",
                             f"Bearer {real[:-1]}", f"Bearer {real}x", "Bearer", real,
                             f"Basic {real}", f"Bearer {real.upper()}"])), max_size=3))
        def run(values: list[str]) -> None:
            md = tuple(("authorization", v) for v in values)
            before = all_digests(ts)
            try:
                stub.SetAgentState(rpb.SetAgentStateRequest(
                    agent_id="cred-probe", status=rpb.AGENT_STATUS_AWAY,
                    queues=[rpb.QueueMembership(queue="cred", proficiency=1)],
                    capacities=[rpb.ChannelCapacity(channel=1, capacity=1)]),
                    metadata=md, timeout=10)
                code = grpc.StatusCode.OK
            except grpc.RpcError as err:
                code = err.code()  # type: ignore[attr-defined]
            first = values[0] if values else ""
            scheme, _, token = first.partition(" ")
            valid = scheme.lower() == "bearer" and token.strip() == real
            assert code is (grpc.StatusCode.OK if valid else grpc.StatusCode.UNAUTHENTICATED), \
                (values, code)
            if not valid:
                assert all_digests(ts) == before
            CASES["credentials"] += 1

        run()


# --------------------------------------------------------- Connect sequences
AGENTS = ["a0", "a1", "a2", "a3"]
CONTACTS = ["c0", "c1", "c2", "c3", "c4", "c5"]
QUEUES = ["q0", "q1"]


@st.composite
def switch_steps(draw: Any) -> list[tuple[str, Any]]:
    """A sequence of (kind, payload): switch events on a small set of ids, clock
    moves, and now and then a random event. Decision references are indexes into
    the decisions seen so far, resolved when sent."""
    steps: list[tuple[str, Any]] = []
    for _ in range(draw(st.integers(1, 24))):
        kind = draw(st.sampled_from(
            ["route", "route", "route", "ready", "state", "state", "confirm", "release",
             "end", "end", "outcome", "tick", "random", "profiles"]))
        if kind == "route":
            steps.append((kind, dict(
                contact_id=draw(st.sampled_from(CONTACTS)), queue=draw(st.sampled_from(QUEUES)),
                channel=draw(st.sampled_from([1, 2, 2, 9])),
                priority=draw(st.integers(0, 3)),
                customer_key=draw(st.sampled_from(["", "k1", "k2"])),
                excluded_agent_ids=draw(st.lists(st.sampled_from(AGENTS), max_size=2)),
                preferred_agent_ids=draw(st.lists(st.sampled_from(AGENTS), max_size=1)))))
        elif kind == "ready":
            steps.append((kind, draw(st.sampled_from(AGENTS))))
        elif kind == "state":
            steps.append((kind, dict(
                agent_id=draw(st.sampled_from(AGENTS)),
                status=draw(st.sampled_from([1, 1, 2, 3, 4, 9])),
                queues=draw(st.lists(st.sampled_from(QUEUES), max_size=2, unique=True)),
                prof=draw(st.integers(0, 100)),
                voice=draw(st.integers(0, 2)), chat=draw(st.integers(0, 3)))))
        elif kind in ("confirm", "release", "outcome"):
            steps.append((kind, (draw(st.integers(0, 30)), draw(st.integers(1, 2)))))
        elif kind == "end":
            steps.append((kind, (draw(st.sampled_from(CONTACTS)), draw(st.integers(1, 4)),
                                 draw(st.sampled_from([0, 0, 5000])))))
        elif kind == "profiles":
            unit = st.floats(-2, 2, width=32)
            steps.append((kind, (
                draw(st.lists(st.tuples(st.sampled_from(["k1", "k2"]),
                                        st.lists(unit, min_size=4, max_size=4)), min_size=1,
                              max_size=2, unique_by=lambda t: t[0])),
                draw(st.lists(st.tuples(st.sampled_from(AGENTS),
                                        st.lists(unit, min_size=3, max_size=3)), min_size=1,
                              max_size=4, unique_by=lambda t: t[0])))))
        elif kind == "tick":
            steps.append((kind, draw(st.sampled_from([0.5, 3.0, 6.0, 20.0]))))
        else:
            steps.append((kind, draw(messages(rpb.SwitchEvent.DESCRIPTOR))))
    return steps


def event_of(kind: str, p: Any, decisions: list[str], i: int) -> rpb.SwitchEvent:
    rid = f"r{i}"
    if kind == "route":
        return rpb.SwitchEvent(request_id=rid, route_contact=rpb.RouteContactRequest(**p))
    if kind == "ready":
        return rpb.SwitchEvent(request_id=rid, agent_ready=rpb.AgentReadyRequest(agent_id=p))
    if kind == "state":
        caps = [rpb.ChannelCapacity(channel=1, capacity=p["voice"]),
                rpb.ChannelCapacity(channel=2, capacity=p["chat"])]
        members = [rpb.QueueMembership(queue=q, proficiency=p["prof"]) for q in p["queues"]]
        return rpb.SwitchEvent(request_id=rid, set_agent_state=rpb.SetAgentStateRequest(
            agent_id=p["agent_id"], status=p["status"], queues=members, capacities=caps))
    if kind in ("confirm", "release", "outcome"):
        k, reason = p
        did = decisions[k % len(decisions)] if decisions else "d-none"
        if kind == "confirm":
            return rpb.SwitchEvent(request_id=rid, confirm_decision=rpb.ConfirmDecisionRequest(
                decision_id=did))
        if kind == "release":
            return rpb.SwitchEvent(request_id=rid, release_decision=rpb.ReleaseDecisionRequest(
                decision_id=did, reason=reason))
        return rpb.SwitchEvent(request_id=rid, report_outcome=rpb.ReportOutcomeRequest(
            decision_id=did, outcomes={"converted": float(reason - 1)}))
    if kind == "end":
        cid, reason, wrap = p
        return rpb.SwitchEvent(request_id=rid, end_contact=rpb.EndContactRequest(
            contact_id=cid, reason=reason, wrap_up_ms=wrap))
    ev = rpb.SwitchEvent()
    ev.CopyFrom(p)
    ev.request_id = rid
    return ev


def reset_seq(ts: ThreadServer, who: str = "seq") -> None:
    """A fresh sequence tenant for each sequence (routing and store), model kept active."""
    service = ts.server.service

    def fresh() -> None:
        old = service.tenants[who]
        rt = TenantRuntime(old.config, np.random.default_rng(1))
        rt.scorer = old.scorer
        service.tenants[who] = rt
        store_t = service.store._tenants.get(who)  # type: ignore[attr-defined]
        if store_t is not None:
            store_t.customers.clear()
            store_t.agents.clear()
            store_t.decisions.clear()

    ts.run(fresh)


class Lockstep:
    """A Connect stream where the test sends one event and reads its reply."""

    def __init__(self, ts: ThreadServer, who: str = "seq") -> None:
        self._q: queue.Queue[Any] = queue.Queue()
        stub = router_pb2_grpc_stub(ts.channel)
        self._replies = stub.Connect(iter(self._q.get, None),
                                     metadata=(("authorization",
                                                f"Bearer {TENANT_KEYS[who]}"),),
                                     timeout=60)

    def send(self, event: rpb.SwitchEvent) -> rpb.SwitchReply:
        self._q.put(event)
        return next(self._replies)  # type: ignore[no-any-return]

    def close(self) -> grpc.StatusCode:
        self._q.put(None)
        for _ in self._replies:
            pass
        return self._replies.code()  # type: ignore[no-any-return]


def upsert_profiles(profiles: Any, md: Any, p: Any, i: int) -> None:
    """A ``profiles`` step: its customer and agent profiles, at version ``i``."""
    customers, agents = p
    profiles.UpsertCustomerProfiles(iter([profiles_pb2.CustomerProfileBatch(
        profiles=[profiles_pb2.CustomerProfile(
            customer_key=k, vector=v, version=i, source_time_ms=i + 1)
            for k, v in customers])]), metadata=md, timeout=10)
    profiles.UpsertAgentProfiles(profiles_pb2.AgentProfileBatch(
        profiles=[profiles_pb2.AgentProfile(
            agent_id=a, vector=v, version=i, source_time_ms=i + 1)
            for a, v in agents]), metadata=md, timeout=10)


def router_pb2_grpc_stub(channel: grpc.Channel) -> Any:
    from pairline._proto.pairline.v1 import router_pb2_grpc

    return router_pb2_grpc.RouterStub(channel)


class TestConnectSequences:
    def test_random_event_sequences(self, ts: ThreadServer) -> None:
        """Random switch event sequences over one Connect stream: one reply per event
        in order; never INTERNAL/UNKNOWN; a refused event changes nothing; no decision
        beyond capacity; invariants hold after every event; no contact lost or
        invented; every decision recorded."""
        service = ts.server.service

        from pairline._proto.pairline.v1 import profiles_pb2_grpc

        profiles = profiles_pb2_grpc.ProfilesStub(ts.channel)

        @fuzz_settings(450)
        @given(steps=switch_steps(), who=st.sampled_from(list(SEQ_TENANTS)))
        def run(steps: list[tuple[str, Any]], who: str) -> None:
            reset_seq(ts, who)
            stream = Lockstep(ts, who)
            md = (("authorization", f"Bearer {TENANT_KEYS[who]}"),)
            decisions: list[str] = []
            live: set[str] = set()
            try:
                for i, (kind, p) in enumerate(steps):
                    if kind == "tick":
                        ts.clock.advance(p)
                        ts.call(service.expire_all())
                        continue
                    if kind == "profiles":
                        upsert_profiles(profiles, md, p, i)
                        continue
                    ev = event_of(kind, p, decisions, i)
                    before = ts.run(lambda: digest(ts, who))
                    reply = stream.send(ev)
                    EVENTS["Connect"] += 1
                    assert reply.request_id == ev.request_id
                    which = reply.WhichOneof("reply")
                    ANSWERS["event " + (CODE_NAMES[reply.error.code]
                                        if which == "error" else "OK")] += 1
                    if which == "error":
                        assert reply.error.code not in (13, 2), (ev, reply)
                        after = ts.run(lambda: digest(ts, who))
                        assert after == before, (ev, reply.error)
                    else:
                        kind_sent = ev.WhichOneof("event")
                        if kind_sent == "route_contact":
                            live.add(ev.route_contact.contact_id)
                        if kind_sent == "end_contact":
                            live.discard(ev.end_contact.contact_id)
                        if which == "decision" and reply.decision.decision_id:
                            d = reply.decision
                            decisions.append(d.decision_id)
                            live.add(d.contact_id)

                            def spare(d: Any = d) -> bool:
                                a = service.tenants[who].routing.agents[d.agent_id]
                                c = Channel(d.channel) - 1
                                return a.in_use[c] <= a.capacity[c]

                            assert ts.run(spare), f"{d.agent_id} over capacity"
                    problems = ts.run(lambda: invariant_problems(service.tenants[who].routing))
                    assert not problems, (ev, problems)
                assert stream.close() is grpc.StatusCode.OK
            finally:
                stream.close()

            def lost_and_recorded() -> tuple[set[str], set[str], list[str]]:
                r = service.tenants[who].routing
                kept = service.store._tenants.get(who)  # type: ignore[attr-defined]
                recorded = set(kept.decisions) if kept is not None else set()
                return set(r.contacts), recorded, decisions

            present, recorded, made = ts.run(lost_and_recorded)
            assert present == live, f"lost {live - present}, invented {present - live}"
            assert set(made) <= recorded, set(made) - recorded
            CASES["Connect.sequence"] += 1

        run()

    def test_concurrent_streams(self, ts: ThreadServer) -> None:
        """Three Connect streams of one tenant at once, their contacts apart, agents and
        queues shared: every event answered, never INTERNAL/UNKNOWN, each contact held
        by at most one agent, and exactly the contacts routed and not ended are live."""
        service = ts.server.service

        def own(steps: list[tuple[str, Any]], k: int) -> list[tuple[str, Any]]:
            out: list[tuple[str, Any]] = []
            for kind, p in steps:
                if kind == "route":
                    out.append((kind, {**p, "contact_id": f"s{k}-{p['contact_id']}"}))
                elif kind == "end":
                    out.append((kind, (f"s{k}-{p[0]}", *p[1:])))
                elif kind not in ("random", "profiles", "tick"):
                    out.append((kind, p))
            return out

        @fuzz_settings(150)
        @given(plans=st.lists(switch_steps(), min_size=3, max_size=3),
               who=st.sampled_from(list(SEQ_TENANTS)))
        def run(plans: list[list[tuple[str, Any]]], who: str) -> None:
            reset_seq(ts, who)
            lives: list[set[str]] = [set() for _ in plans]
            failures: list[BaseException] = []

            def drive(k: int) -> None:
                stream = Lockstep(ts, who)
                decisions: list[str] = []
                try:
                    for i, (kind, p) in enumerate(own(plans[k], k)):
                        ev = event_of(kind, p, decisions, i)
                        reply = stream.send(ev)
                        EVENTS["Connect.concurrent"] += 1
                        assert reply.request_id == ev.request_id
                        which = reply.WhichOneof("reply")
                        if which == "error":
                            assert reply.error.code not in (13, 2), (ev, reply)
                            continue
                        if kind == "route":
                            lives[k].add(ev.route_contact.contact_id)
                        elif kind == "end":
                            lives[k].discard(ev.end_contact.contact_id)
                        if which == "decision" and reply.decision.decision_id:
                            decisions.append(reply.decision.decision_id)
                    assert stream.close() is grpc.StatusCode.OK
                except BaseException as exc:  # reported by the main thread
                    failures.append(exc)
                    stream.close()

            threads = [threading.Thread(target=drive, args=(k,)) for k in range(len(plans))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            if failures:
                raise failures[0]
            problems = ts.run(lambda: invariant_problems(service.tenants[who].routing))
            assert not problems, problems
            present = ts.run(lambda: set(service.tenants[who].routing.contacts))
            live = set().union(*lives)
            assert present == live, f"lost {live - present}, invented {present - live}"
            CASES["Connect.concurrent"] += 1

        run()

    def test_random_batches(self, ts: ThreadServer) -> None:
        """ConnectBatch with random batches (random events, sizes): one reply per
        event, never INTERNAL/UNKNOWN, invariants hold."""
        stub = router_pb2_grpc_stub(ts.channel)

        @fuzz_settings(250)
        @given(batches=st.lists(st.lists(messages(rpb.SwitchEvent.DESCRIPTOR), max_size=6),
                                min_size=1, max_size=3),
               who=st.sampled_from(list(SEQ_TENANTS)))
        def run(batches: list[list[rpb.SwitchEvent]], who: str) -> None:
            reset_seq(ts, who)
            md = (("authorization", f"Bearer {TENANT_KEYS[who]}"),)
            replies = list(stub.ConnectBatch(
                iter([rpb.SwitchEventBatch(events=b) for b in batches]), metadata=md,
                timeout=30))
            assert [len(r.replies) for r in replies] == [len(b) for b in batches]
            for r in replies:
                for one in r.replies:
                    assert not (one.HasField("error") and one.error.code in (13, 2)), one
            assert_invariants(ts)
            CASES["ConnectBatch.random"] += 1

        run()


def test_zz_case_count_and_server_alive(ts: ThreadServer) -> None:
    """The module ran its >=10,000 cases (when run whole) and the server still serves."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    resp = health_pb2_grpc.HealthStub(ts.channel).Check(health_pb2.HealthCheckRequest(),
                                                        timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    ran_all = all(CASES[k] for k in ("malformed", "Connect.sequence", "ConnectBatch.random")) and \
        all(CASES[p.rsplit("/", 1)[1]] for p, _ in METHODS)
    print(f"fuzz cases: total={sum(CASES.values())} events={dict(EVENTS)} "
          f"answers={dict(sorted(ANSWERS.items()))}")
    if ran_all and SCALE >= 1:
        assert sum(CASES.values()) >= 10_000, dict(CASES)

"""The Profiles service through a real server: profile upserts (staleness, batches,
all-or-nothing, tenant isolation) and models (upload, activation, validation).

There is no read RPC for profiles: what is stored is observed through the
outcome of later writes (a write as old as the stored profile is stale) and,
where the vector itself matters, through the agent a greedy tenant picks.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import re
import zipfile
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from support import Client, Running, contact, error_field, login, running, settings

from pairline._proto.pairline.v1 import common_pb2 as cpb
from pairline._proto.pairline.v1 import profiles_pb2 as ppb
from pairline._proto.pairline.v1 import router_pb2 as rpb
from pairline.model import dump_model

M = cpb
INVALID = grpc.StatusCode.INVALID_ARGUMENT
T0 = 1_700_000_000_000  # a source time (unix ms)


# -------------------------------------------------------------------- helpers
def cprof(key: str, t: int = T0, version: int = 1,
          vector: list[float] | None = None) -> ppb.CustomerProfile:
    return ppb.CustomerProfile(customer_key=key, vector=vector or [0.1, 0.2, 0.3, 0.4],
                               version=version, source_time_ms=t)


def aprof(agent_id: str, t: int = T0, version: int = 1,
          vector: list[float] | None = None) -> ppb.AgentProfile:
    return ppb.AgentProfile(agent_id=agent_id, vector=vector or [0.1, 0.2, 0.3],
                            version=version, source_time_ms=t)


def batch(*profiles: ppb.CustomerProfile) -> ppb.CustomerProfileBatch:
    return ppb.CustomerProfileBatch(profiles=list(profiles))


async def stream(c: Client, *batches: ppb.CustomerProfileBatch) -> ppb.UpsertResult:
    async def gen() -> AsyncIterator[ppb.CustomerProfileBatch]:
        for b in batches:
            yield b

    return await c.profiles.UpsertCustomerProfiles(gen())


async def agents(c: Client, *profiles: ppb.AgentProfile) -> ppb.UpsertResult:
    return await c.profiles.UpsertAgentProfiles(ppb.AgentProfileBatch(profiles=list(profiles)))


def outcome(r: ppb.UpsertResult) -> tuple[int, int, list[int]]:
    return r.accepted, r.stale, list(r.stale_indexes)


async def rejected(call: Awaitable[Any], code: grpc.StatusCode = INVALID) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() is code, f"{err.value.code()}: {err.value.details()}"
    return err.value


async def customer_is_stored(c: Client, key: str, t: int, version: int = 1) -> bool:
    """Whether a profile at least as new as (t, version) is stored for ``key``: the
    same write is then stale. (If not, the probe itself is written.)"""
    out = await c.profiles.UpsertCustomerProfile(cprof(key, t, version))
    assert out.accepted + out.stale == 1
    return out.stale == 1


async def agent_is_stored(c: Client, agent_id: str, t: int, version: int = 1) -> bool:
    out = await agents(c, aprof(agent_id, t, version))
    assert out.accepted + out.stale == 1
    return out.stale == 1


def model_file(version: str = "v1", *, customer_dim: int = 4, agent_dim: int = 3,
               context: tuple[str, ...] = (), W: np.ndarray | None = None, **kw: Any) -> bytes:
    dx = customer_dim + len(context)
    if W is None:
        W = np.arange(dx * agent_dim, dtype=np.float32).reshape(dx, agent_dim) / 10
    return dump_model(version=version, W=W, wc=np.zeros(dx), wa=np.zeros(agent_dim), b=0.0,
                      context_features=context, **kw)


def raw_npz(meta: Any = None, drop: tuple[str, ...] = (), **arrays: Any) -> bytes:
    """A model archive written by hand, so that any part can be made wrong."""
    files: dict[str, Any] = {
        "W": np.zeros((4, 3), np.float32), "wc": np.zeros(4, np.float32),
        "wa": np.zeros(3, np.float32), "b": np.asarray(0.0, np.float32),
    }
    files.update(arrays)
    if meta is None:
        meta = {"version": "bad", "customer_dim": 4, "agent_dim": 3}
    files["meta"] = np.array(json.dumps(meta)) if isinstance(meta, dict) else meta
    for name in drop:
        files.pop(name)
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=True, **files)
    return buf.getvalue()


async def upload(c: Client, data: bytes, activate: bool = False) -> ppb.ModelInfo:
    return await c.profiles.UploadModel(ppb.UploadModelRequest(model=data, activate=activate))


async def info(c: Client) -> ppb.GetModelInfoResponse:
    return await c.profiles.GetModelInfo(ppb.GetModelInfoRequest())


async def activate(c: Client, version: str) -> ppb.ModelInfo:
    return await c.profiles.ActivateModel(ppb.ActivateModelRequest(version=version))


# Greedy routing with score(x, a) = x0*a0 + x1*a1: a customer [1,0,0,0] goes to the
# agent with the larger a0, a customer [0,1,0,0] to the one with the larger a1.
E0 = [1.0, 0.0, 0.0, 0.0]
E1 = [0.0, 1.0, 0.0, 0.0]


def pairing_model(version: str = "pm") -> bytes:
    W = np.zeros((4, 3), np.float32)
    W[0, 0] = W[1, 1] = 1.0
    return model_file(version, W=W)


async def greedy_setup(srv: Running, agent_vectors: dict[str, list[float]]) -> None:
    await upload(srv.acme, pairing_model(), activate=True)
    out = await agents(srv.acme, *[aprof(a, T0, vector=v) for a, v in agent_vectors.items()])
    assert out.accepted == len(agent_vectors)
    for a in agent_vectors:
        await srv.acme.router.SetAgentState(login(a, "sales"))


async def routed_to(srv: Running, contact_id: str, key: str) -> str:
    d = await srv.acme.router.RouteContact(contact(contact_id, customer_key=key))
    assert d.mode == M.MODE_PAIRED, d
    await srv.acme.router.EndContact(rpb.EndContactRequest(contact_id=contact_id,
                                                           reason=rpb.END_REASON_ABANDONED))
    return d.agent_id


@pytest.fixture
async def greedy() -> AsyncIterator[Running]:
    """A real server whose tenants pair by the greedy policy."""
    async with running(settings(policy="greedy", wrap_up_s=0.0)) as r:
        yield r


# ---------------------------------------------------------- customer profiles
class TestCustomerProfile:
    async def test_first_write_is_accepted(self, srv: Running) -> None:
        """A new customer profile is accepted, nothing stale."""
        out = await srv.acme.profiles.UpsertCustomerProfile(cprof("+15550001", T0))
        assert outcome(out) == (1, 0, [])

    async def test_older_write_is_stale(self, srv: Running) -> None:
        """A write with an older source_time_ms is stale (index 0) and the newer one stays."""
        p = srv.acme.profiles
        assert outcome(await p.UpsertCustomerProfile(cprof("k", 300))) == (1, 0, [])
        assert outcome(await p.UpsertCustomerProfile(cprof("k", 200, version=99))) == (0, 1, [0])
        assert await customer_is_stored(srv.acme, "k", 300)

    @pytest.mark.parametrize("version", [1, 4, 5], ids=["lower", "lower-2", "equal"])
    async def test_same_time_lower_or_equal_version_is_stale(self, srv: Running,
                                                              version: int) -> None:
        """At the same source time a lower or equal version is stale."""
        p = srv.acme.profiles
        await p.UpsertCustomerProfile(cprof("k", 300, version=5))
        assert outcome(await p.UpsertCustomerProfile(cprof("k", 300, version))) == (0, 1, [0])

    async def test_same_time_higher_version_replaces(self, srv: Running) -> None:
        """At the same source time a higher version is accepted and becomes the stored one."""
        p = srv.acme.profiles
        await p.UpsertCustomerProfile(cprof("k", 300, version=5))
        assert outcome(await p.UpsertCustomerProfile(cprof("k", 300, version=6))) == (1, 0, [])
        assert await customer_is_stored(srv.acme, "k", 300, version=6)

    async def test_newer_write_replaces(self, srv: Running) -> None:
        """A newer write is accepted and replaces: a write between the two is then stale."""
        p = srv.acme.profiles
        await p.UpsertCustomerProfile(cprof("k", 100))
        assert outcome(await p.UpsertCustomerProfile(cprof("k", 300))) == (1, 0, [])
        assert outcome(await p.UpsertCustomerProfile(cprof("k", 200))) == (0, 1, [0])
        assert outcome(await p.UpsertCustomerProfile(cprof("k", 301))) == (1, 0, [])

    async def test_stale_write_does_not_change_the_vector(self, greedy: Running) -> None:
        """A stale write leaves the stored vector in use: routing still follows the newer one."""
        await greedy_setup(greedy, {"a0": [1, 0, 0], "a1": [0, 1, 0]})
        p = greedy.acme.profiles
        await p.UpsertCustomerProfile(cprof("+1", 300, vector=E0))
        assert (await p.UpsertCustomerProfile(cprof("+1", 200, vector=E1))).stale == 1
        assert await routed_to(greedy, "c1", "+1") == "a0"
        assert (await p.UpsertCustomerProfile(cprof("+1", 400, vector=E1))).accepted == 1
        assert await routed_to(greedy, "c2", "+1") == "a1"


class TestCustomerProfileBatches:
    @pytest.mark.parametrize("newer_first", [True, False], ids=["newer-first", "older-first"])
    async def test_newer_of_two_rows_for_one_key_wins(self, srv: Running,
                                                      newer_first: bool) -> None:
        """Two rows for one key in a batch: the newer is stored whichever comes first."""
        rows = [cprof("k", 300), cprof("k", 100)]
        if not newer_first:
            rows.reverse()
        out = await stream(srv.acme, batch(*rows))
        assert out.accepted + out.stale == 2 and out.accepted >= 1
        if newer_first:
            assert outcome(out) == (1, 1, [1])
        assert await customer_is_stored(srv.acme, "k", 200)
        assert await customer_is_stored(srv.acme, "k", 300)
        assert not await customer_is_stored(srv.acme, "k", 301)

    @pytest.mark.parametrize("newer_first", [True, False], ids=["newer-first", "older-first"])
    async def test_newer_row_wins_by_vector(self, greedy: Running, newer_first: bool) -> None:
        """Two rows for one key in a batch: routing uses the newer row's vector."""
        await greedy_setup(greedy, {"a0": [1, 0, 0], "a1": [0, 1, 0]})
        rows = [cprof("+1", 300, vector=E1), cprof("+1", 100, vector=E0)]
        if not newer_first:
            rows.reverse()
        await stream(greedy.acme, batch(*rows))
        assert await routed_to(greedy, "c1", "+1") == "a1"

    async def test_counts_across_batches(self, srv: Running) -> None:
        """accepted, stale and stale_indexes are summed over batches; indexes count across them."""
        out = await stream(
            srv.acme,
            batch(cprof("a", 100), cprof("b", 100)),                   # 0, 1
            batch(cprof("a", 50), cprof("c", 100), cprof("b", 100)),   # 2 stale, 3, 4 stale
            batch(cprof("c", 200), cprof("a", 100, version=1)),        # 5, 6 stale
        )
        assert outcome(out) == (4, 3, [2, 4, 6])
        assert await customer_is_stored(srv.acme, "c", 200)

    async def test_stale_against_earlier_calls(self, srv: Running) -> None:
        """A stream is stale against profiles stored by earlier calls (unary or stream)."""
        await srv.acme.profiles.UpsertCustomerProfile(cprof("x", 500))
        await stream(srv.acme, batch(cprof("y", 500)))
        out = await stream(srv.acme, batch(cprof("z", 1)), batch(cprof("y", 400), cprof("x", 499)))
        assert outcome(out) == (1, 2, [1, 2])

    async def test_stale_indexes_capped_at_1000(self, srv: Running) -> None:
        """stale counts every stale profile; stale_indexes lists the first 1,000 only."""
        rows = [cprof(f"k{i}", 100) for i in range(700)]
        assert (await stream(srv.acme, batch(*rows), batch(*rows[:500]))).stale == 500
        out = await stream(srv.acme, batch(*rows), batch(*rows))
        assert (out.accepted, out.stale) == (0, 1400)
        assert list(out.stale_indexes) == list(range(1000))

    async def test_invalid_batch_ends_the_call_and_earlier_batches_stay(self, srv: Running) -> None:
        """An invalid batch ends the stream with INVALID_ARGUMENT saying how many batches
        were applied; those stay applied, nothing of the invalid batch or later is written."""
        await srv.acme.profiles.UpsertCustomerProfile(cprof("old", 100))
        bad_rows = [cprof(f"b2-{i}", 100) for i in range(5)] + [
            cprof("b2-5", 100, vector=[0.1, float("nan"), 0.3, 0.4]),
            cprof("old", 300),
        ]
        err = await rejected(stream(
            srv.acme,
            batch(cprof("b0-0", 100), cprof("b0-1", 100)),
            batch(cprof("b1-0", 100), cprof("old", 50)),   # old@50 is stale, not applied
            batch(*bad_rows),
            batch(cprof("b3-0", 100)),
        ))
        assert error_field(err) == "batches[2].profiles[5].vector"
        details = err.details() or ""
        assert re.search(r"\b2 earlier batch", details), details
        assert re.search(r"\b3 profile", details), details
        for key in ("b0-0", "b0-1", "b1-0"):
            assert await customer_is_stored(srv.acme, key, 100), key
        for i in range(5):  # rows 0-4 of the invalid batch were not written
            assert not await customer_is_stored(srv.acme, f"b2-{i}", 100), i
        assert not await customer_is_stored(srv.acme, "old", 200)  # not replaced by old@300
        assert not await customer_is_stored(srv.acme, "b3-0", 100)

    async def test_invalid_first_batch_applies_nothing(self, srv: Running) -> None:
        """An invalid first batch: zero batches applied, none of its rows written."""
        err = await rejected(stream(srv.acme, batch(cprof("a", 100), cprof("", 100))))
        assert error_field(err) == "batches[0].profiles[1].customer_key"
        assert re.search(r"\b0 earlier batch", err.details() or ""), err.details()
        assert not await customer_is_stored(srv.acme, "a", 100)

    async def test_empty_stream(self, srv: Running) -> None:
        """A stream without batches writes nothing and reports zeros."""
        assert outcome(await stream(srv.acme)) == (0, 0, [])


# ------------------------------------------------------------- agent profiles
class TestAgentProfiles:
    async def test_accepted(self, srv: Running) -> None:
        """New agent profiles are all accepted."""
        out = await agents(srv.acme, aprof("a1"), aprof("a2"), aprof("a3"))
        assert outcome(out) == (3, 0, [])

    async def test_older_and_equal_writes_are_stale(self, srv: Running) -> None:
        """Older source time, or same time with lower/equal version, is stale with its index."""
        await agents(srv.acme, aprof("a1", 300, 5), aprof("a2", 300, 5))
        out = await agents(srv.acme, aprof("a1", 200, 9), aprof("x", 1), aprof("a2", 300, 4),
                           aprof("a1", 300, 5), aprof("a2", 300, 6))
        assert outcome(out) == (2, 3, [0, 2, 3])
        assert await agent_is_stored(srv.acme, "a2", 300, 6)
        assert not await agent_is_stored(srv.acme, "a1", 300, 6)

    async def test_newer_write_replaces(self, srv: Running) -> None:
        """A newer agent write replaces: a write between the two is then stale."""
        await agents(srv.acme, aprof("a1", 100))
        assert outcome(await agents(srv.acme, aprof("a1", 300))) == (1, 0, [])
        assert outcome(await agents(srv.acme, aprof("a1", 200))) == (0, 1, [0])

    @pytest.mark.parametrize("newer_first", [True, False], ids=["newer-first", "older-first"])
    async def test_newer_of_two_rows_wins(self, srv: Running, newer_first: bool) -> None:
        """Two rows for one agent in a batch: the newer is stored whichever comes first."""
        rows = [aprof("a1", 300), aprof("a1", 100)]
        if not newer_first:
            rows.reverse()
        out = await agents(srv.acme, *rows)
        assert out.accepted + out.stale == 2 and out.accepted >= 1
        assert await agent_is_stored(srv.acme, "a1", 200)
        assert not await agent_is_stored(srv.acme, "a1", 301)

    @pytest.mark.parametrize("newer_first", [True, False], ids=["newer-first", "older-first"])
    async def test_newer_row_wins_by_vector(self, greedy: Running, newer_first: bool) -> None:
        """Two rows for one agent in a batch: routing uses the newer row's vector."""
        await greedy_setup(greedy, {"x": [0.5, 0, 0], "y": [0.6, 0, 0]})
        rows = [aprof("x", T0 + 2, vector=[1, 0, 0]), aprof("x", T0 + 1, vector=[0, 0, 0])]
        if not newer_first:
            rows.reverse()
        await agents(greedy.acme, *rows)
        await greedy.acme.profiles.UpsertCustomerProfile(cprof("+1", vector=E0))
        assert await routed_to(greedy, "c1", "+1") == "x"

    async def test_stale_write_does_not_change_the_vector(self, greedy: Running) -> None:
        """A stale agent write leaves the stored vector in use for routing."""
        await greedy_setup(greedy, {"x": [1, 0, 0], "y": [0.5, 0, 0]})
        await greedy.acme.profiles.UpsertCustomerProfile(cprof("+1", vector=E0))
        out = await agents(greedy.acme, aprof("x", T0 - 1, vector=[0, 0, 0]))
        assert outcome(out) == (0, 1, [0])
        assert await routed_to(greedy, "c1", "+1") == "x"
        assert (await agents(greedy.acme, aprof("x", T0 + 1, vector=[0, 0, 0]))).accepted == 1
        assert await routed_to(greedy, "c2", "+1") == "y"

    async def test_invalid_row_rejects_the_whole_batch(self, srv: Running) -> None:
        """An invalid row 5 is INVALID_ARGUMENT on profiles[5]; rows 0-4 are not written."""
        await agents(srv.acme, aprof("old", 100))
        rows = [aprof(f"p{i}", 100) for i in range(5)]
        rows += [aprof("p5", 100, vector=[0.1, 0.2]), aprof("old", 300)]
        err = await rejected(agents(srv.acme, *rows))
        assert error_field(err) == "profiles[5].vector"
        for i in range(5):
            assert not await agent_is_stored(srv.acme, f"p{i}", 100), i
        assert not await agent_is_stored(srv.acme, "old", 200)

    async def test_invalid_batch_leaves_routing_vectors(self, greedy: Running) -> None:
        """A rejected agent batch changes no vector used for routing, even valid rows in it."""
        await greedy_setup(greedy, {"x": [1, 0, 0], "y": [0.5, 0, 0]})
        await greedy.acme.profiles.UpsertCustomerProfile(cprof("+1", vector=E0))
        await rejected(agents(greedy.acme, aprof("x", T0 + 1, vector=[0, 0, 0]),
                              aprof("y", T0 + 1, vector=[float("inf"), 0, 0])))
        assert await routed_to(greedy, "c1", "+1") == "x"


# ----------------------------------------------------------------- isolation
class TestTenantIsolation:
    async def test_customer_profiles(self, srv: Running) -> None:
        """acme's newer customer profile does not make globex's write of the same key stale."""
        await srv.acme.profiles.UpsertCustomerProfile(cprof("+15550123456", 300))
        out = await srv.globex.profiles.UpsertCustomerProfile(cprof("+15550123456", 200))
        assert outcome(out) == (1, 0, [])
        out = await stream(srv.globex, batch(cprof("+15550123456", 250)))
        assert outcome(out) == (1, 0, [])
        assert await customer_is_stored(srv.acme, "+15550123456", 300)  # acme's untouched
        assert not await customer_is_stored(srv.globex, "+15550123456", 260)

    async def test_agent_profiles(self, srv: Running) -> None:
        """acme's agent profile does not make globex's write of the same agent id stale."""
        await agents(srv.acme, aprof("a1", 300))
        assert outcome(await agents(srv.globex, aprof("a1", 200))) == (1, 0, [])
        assert await agent_is_stored(srv.acme, "a1", 300)

    async def test_models(self, srv: Running) -> None:
        """Models of one tenant are invisible to, and do not collide with, another's."""
        await upload(srv.acme, model_file("v1"), activate=True)
        g = await info(srv.globex)
        assert not g.models and not g.HasField("active")
        await rejected(activate(srv.globex, "v1"), grpc.StatusCode.NOT_FOUND)
        other = await upload(srv.globex, model_file("v1", outcome="revenue"), activate=False)
        assert other.version == "v1" and not other.active
        a = await info(srv.acme)
        assert a.active.version == "v1" and a.active.outcome == "converted"


# -------------------------------------------------------------------- models
class TestUploadModel:
    async def test_upload_returns_model_info(self, srv: Running) -> None:
        """UploadModel answers the stored model's ModelInfo, not active unless asked."""
        got = await upload(srv.acme, model_file("2024-06.a", outcome="converted",
                                                trained_at_ms=1_717_000_000_000,
                                                link="identity"))
        assert got == ppb.ModelInfo(version="2024-06.a", outcome="converted", customer_dim=4,
                                    agent_dim=3, trained_at_ms=1_717_000_000_000,
                                    active=False, link="identity")
        i = await info(srv.acme)
        assert not i.HasField("active")
        assert list(i.models) == [got]

    async def test_upload_with_context_features(self, srv: Running) -> None:
        """A model with k context features has W of (4 + k) x 3 and lists them."""
        got = await upload(srv.acme, model_file("ctx", context=("intent", "tenure")))
        assert list(got.context_features) == ["intent", "tenure"]
        assert (got.customer_dim, got.agent_dim) == (4, 3)

    async def test_activate_on_upload(self, srv: Running) -> None:
        """activate=True makes the uploaded model the active one."""
        got = await upload(srv.acme, model_file("v1"), activate=True)
        assert got.active
        i = await info(srv.acme)
        assert i.HasField("active") and i.active == got
        assert [m.active for m in i.models] == [True]

    async def test_activate_unknown_version(self, srv: Running) -> None:
        """ActivateModel of a version never uploaded is NOT_FOUND; the active one stays."""
        await upload(srv.acme, model_file("v1"), activate=True)
        await rejected(activate(srv.acme, "v9"), grpc.StatusCode.NOT_FOUND)
        assert (await info(srv.acme)).active.version == "v1"

    async def test_activate_without_any_model(self, srv: Running) -> None:
        """ActivateModel before any upload is NOT_FOUND and leaves no active model."""
        await rejected(activate(srv.acme, "v1"), grpc.StatusCode.NOT_FOUND)
        assert not (await info(srv.acme)).HasField("active")

    async def test_same_bytes_again_is_idempotent(self, srv: Running) -> None:
        """Re-uploading a version with identical bytes succeeds and stores it once."""
        data = model_file("v1")
        first = await upload(srv.acme, data)
        again = await upload(srv.acme, data)
        assert again == first
        assert [m.version for m in (await info(srv.acme)).models] == ["v1"]
        third = await upload(srv.acme, data, activate=True)
        assert third.active and (await info(srv.acme)).active.version == "v1"

    async def test_same_version_other_bytes(self, srv: Running) -> None:
        """Re-uploading a version with other content is ALREADY_EXISTS; the stored one stays."""
        await upload(srv.acme, model_file("v1", outcome="converted"))
        await upload(srv.acme, model_file("v0"), activate=True)
        await rejected(upload(srv.acme, model_file("v1", outcome="revenue"), activate=True),
                       grpc.StatusCode.ALREADY_EXISTS)
        i = await info(srv.acme)
        assert i.active.version == "v0"
        (v1,) = [m for m in i.models if m.version == "v1"]
        assert v1.outcome == "converted" and len(i.models) == 2

    async def test_listing_marks_exactly_one_active(self, srv: Running) -> None:
        """GetModelInfo lists every uploaded version and flags exactly the active one."""
        for v, act in (("v1", False), ("v2", True), ("v3", False)):
            await upload(srv.acme, model_file(v), activate=act)
        i = await info(srv.acme)
        assert sorted(m.version for m in i.models) == ["v1", "v2", "v3"]
        assert [m.version for m in i.models if m.active] == ["v2"]
        assert i.active.version == "v2" and i.active.active

    async def test_switch_back_and_forth(self, srv: Running) -> None:
        """ActivateModel moves the active flag; exactly one model is active after each switch."""
        await upload(srv.acme, model_file("v1"), activate=True)
        await upload(srv.acme, model_file("v2"))
        for v in ("v2", "v1", "v2", "v2", "v1"):
            got = await activate(srv.acme, v)
            assert got.version == v and got.active
            i = await info(srv.acme)
            assert i.active.version == v
            assert [m.version for m in i.models if m.active] == [v]
            assert len(i.models) == 2

    async def test_decisions_use_the_active_model(self, greedy: Running) -> None:
        """After each switch, decisions carry the version of the model now active."""
        await greedy_setup(greedy, {"a0": [1, 0, 0], "a1": [0, 1, 0]})
        await greedy.acme.profiles.UpsertCustomerProfile(cprof("+1", vector=E0))
        await upload(greedy.acme, pairing_model("pm2"))
        for i, v in enumerate(("pm2", "pm", "pm2")):
            await activate(greedy.acme, v)
            d = await greedy.acme.router.RouteContact(contact(f"c{i}", customer_key="+1"))
            assert d.mode == M.MODE_PAIRED and d.model_version == v
            await greedy.acme.router.EndContact(rpb.EndContactRequest(
                contact_id=f"c{i}", reason=rpb.END_REASON_ABANDONED))


class _WritesFile:
    """Unpickling this creates ``path``: proof that pickled data was executed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (builtins.open, (str(self.path), "w"))


def _plain_npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.zeros((4, 3), np.float32))
    return buf.getvalue()


def _zip_with_raw_meta() -> bytes:
    """A zip whose members are named like an .npz's but 'meta' holds raw JSON text."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("meta.npy", json.dumps({"version": "m", "customer_dim": 4, "agent_dim": 3}))
    return buf.getvalue()


def _overflowing_f64() -> bytes:
    wa = np.array([0.0, 1e300, 0.0])  # finite in float64, inf once cast to float32
    return raw_npz(wa=wa)


INVALID_MODELS: list[Any] = [
    pytest.param(model_file("m", customer_dim=5), id="customer-dim"),
    pytest.param(model_file("m", agent_dim=4), id="agent-dim"),
    pytest.param(raw_npz({"version": "m", "customer_dim": 4, "agent_dim": 3,
                          "context_features": ["intent"]}), id="context-rows-missing"),
    pytest.param(model_file("m", W=np.full((4, 3), np.nan, np.float32)), id="nan-W"),
    pytest.param(raw_npz(wa=np.array([0, np.inf, 0], np.float32)), id="inf-wa"),
    pytest.param(raw_npz(W=np.zeros((4, 3), np.int64)), id="int-W"),
    pytest.param(raw_npz(b=np.asarray(0, np.int32)), id="int-b"),
    pytest.param(raw_npz(drop=("wc",)), id="missing-wc"),
    pytest.param(raw_npz(drop=("W",)), id="missing-W"),
    pytest.param(raw_npz(drop=("meta",)), id="missing-meta"),
    pytest.param(b"this is not an npz archive", id="not-npz"),
    pytest.param(b"PK\x03\x04" + b"\x00" * 40, id="broken-zip"),
    pytest.param(_plain_npy(), id="plain-npy"),
    pytest.param(_zip_with_raw_meta(), id="zip-member-not-npy"),
    pytest.param(_overflowing_f64(), id="f64-overflows-f32"),
    pytest.param(raw_npz(np.array("{'version': 'm'}")), id="meta-not-json"),
    pytest.param(raw_npz(np.array('["m", 4, 3]')), id="meta-not-object"),
    pytest.param(raw_npz({"version": "m", "customer_dim": 4, "agent_dim": 3,
                          "link": "probit"}), id="bad-link"),
    pytest.param(raw_npz({"customer_dim": 4, "agent_dim": 3}), id="no-version"),
]


class TestInvalidModels:
    @pytest.mark.parametrize("data", INVALID_MODELS)
    async def test_rejected_and_nothing_changes(self, srv: Running, data: bytes) -> None:
        """An invalid model is INVALID_ARGUMENT on 'model'; nothing stored, active unchanged."""
        await upload(srv.acme, model_file("good"), activate=True)
        err = await rejected(upload(srv.acme, data, activate=True))
        assert error_field(err) == "model", err.details()
        i = await info(srv.acme)
        assert [m.version for m in i.models] == ["good"]
        assert i.active.version == "good"

    async def test_pickled_object_array_is_not_loaded(self, srv: Running, tmp_path: Path) -> None:
        """A model holding a pickled object array is INVALID_ARGUMENT and is never unpickled."""
        marker = tmp_path / "pwned"
        data = raw_npz({"version": "evil", "customer_dim": 4, "agent_dim": 3},
                       W=np.array([_WritesFile(marker)], dtype=object))
        with np.load(io.BytesIO(data), allow_pickle=True) as f:  # control: payload is live
            f["W"]
        assert marker.exists()
        marker.unlink()
        err = await rejected(upload(srv.acme, data, activate=True))
        assert error_field(err) == "model"
        assert not marker.exists()
        assert not (await info(srv.acme)).models

    async def test_server_keeps_serving_after_bad_uploads(self, srv: Running) -> None:
        """After every kind of bad upload, a valid upload still works and becomes active."""
        for p in INVALID_MODELS:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await upload(srv.acme, p.values[0])
        got = await upload(srv.acme, model_file("after"), activate=True)
        assert got.active and got.version == "after"
        assert (await info(srv.acme)).active.version == "after"


class TestProfileRetention:
    async def test_profiles_expire_after_their_ttl(self) -> None:
        """A customer profile past the tenant's profile_ttl_days is swept and no longer
        used; a rewrite after expiry is accepted as new (not stale)."""
        from support import running, settings

        from pairline._proto.pairline.v1 import profiles_pb2 as ppb

        async with running(settings(profile_ttl_days=1.0)) as srv:
            p = srv.acme.profiles
            prof = ppb.CustomerProfile(customer_key="+1", vector=[1, 0, 0, 0], source_time_ms=5)
            assert (await p.UpsertCustomerProfile(prof)).accepted == 1
            assert (await p.UpsertCustomerProfile(prof)).stale == 1
            store = srv.server.service.store
            srv.clock.advance(86_400.0 - 1)
            assert await srv.server.service.sweep_retention() == 0
            srv.clock.advance(2)
            assert await srv.server.service.sweep_retention() == 1
            assert (await p.UpsertCustomerProfile(prof)).accepted == 1
            assert await store.sweep(srv.clock.now()) == 0

"""One contract, every store: the same tests run unchanged against the embedded
store, the Redis store on a Redis of the suite's own, and the Redis store on a
local 3-master Redis Cluster. Each test uses a tenant of its own, so the shared
Redis servers need no flushing."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import numpy as np
import pytest
from support import RedisClusterProcess, RedisProcess

from pairline.domain import Decision, Mode
from pairline.model import dump_model, load_model
from pairline.stores import MemoryStore
from pairline.stores.base import DecisionRecord, ProfileRow
from pairline.stores.redis import RedisStore, connect

DIMS = (3, 2)
_tenants = itertools.count()


@pytest.fixture(params=["memory", "redis", "cluster"])
async def store_t(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[object, str, str]]:
    """(store, tenant, other tenant)."""
    t, other = f"t{next(_tenants)}", f"t{next(_tenants)}"
    if request.param == "memory":
        yield MemoryStore(), t, other
        return
    server: RedisProcess | RedisClusterProcess = request.getfixturevalue(
        "redis_server" if request.param == "redis" else "redis_cluster"
    )
    store = RedisStore(connect(server.url), {t: DIMS, other: DIMS}, cache_size=4)
    try:
        yield store, t, other
    finally:
        await store.close()


def row(key: str, v: float, version: int = 1, src: int = 1000) -> ProfileRow:
    return ProfileRow(key, np.array([v, v + 1, v + 2], dtype=np.float32), version, src)


def record(did: str, at: float, ttl: float = 100.0, digest: str = "c1") -> DecisionRecord:
    d = Decision(
        decision_id=did, mode=Mode.PAIRED, contact_id=f"k-{did}", agent_id="a1", queue="q",
        channel=1, policy="diagonal", decided_at=at, expires_at=at + 15, model_version="v1",
        predicted_outcome=0.25, slot_on=True, compared=True,
    )
    return DecisionRecord(d, digest, expires_at=at + ttl, context=(("intent", 2.0),))


class TestProfiles:
    async def test_round_trip_keeps_vector_version_and_time(self, store_t) -> None:
        store, t, _ = store_t
        assert await store.upsert_customer_profiles(t, [row("c1", 0.5, 7, 1234)], 60, 0) == []
        got = await store.get_customer_profile(t, "c1", 1)
        assert got is not None
        assert got.vector.dtype == np.float32
        np.testing.assert_array_equal(got.vector, [0.5, 1.5, 2.5])
        assert (got.version, got.source_time_ms) == (7, 1234)

    async def test_stale_write_is_refused_and_reported(self, store_t) -> None:
        store, t, _ = store_t
        await store.upsert_customer_profiles(t, [row("c1", 1.0, 2, 2000)], 60, 0)
        stale = await store.upsert_customer_profiles(
            t, [row("c1", 9.0, 1, 2000), row("c2", 3.0), row("c1", 8.0, 2, 1999)], 60, 1
        )
        assert stale == [0, 2]
        got = await store.get_customer_profile(t, "c1", 2)
        assert got is not None and got.vector[0] == 1.0
        assert (await store.get_customer_profile(t, "c2", 2)) is not None
        # Newer by version at the same source time, and by source time: accepted.
        assert await store.upsert_customer_profiles(t, [row("c1", 4.0, 3, 2000)], 60, 3) == []
        got = await store.get_customer_profile(t, "c1", 4)
        assert got is not None and got.vector[0] == 4.0

    async def test_huge_versions_compare_exactly(self, store_t) -> None:
        """int64 versions beyond a double's 53 bits still order correctly."""
        store, t, _ = store_t
        big = 2**62 + 1
        await store.upsert_customer_profiles(t, [row("c1", 1.0, big, -5)], 60, 0)
        assert await store.upsert_customer_profiles(t, [row("c1", 2.0, big - 1, -5)], 60, 0) == [0]
        assert await store.upsert_customer_profiles(t, [row("c1", 3.0, big + 1, -5)], 60, 0) == []
        got = await store.get_customer_profile(t, "c1", 1)
        assert got is not None and got.version == big + 1 and got.source_time_ms == -5

    async def test_expired_profile_is_gone_and_does_not_block_older_data(self, store_t) -> None:
        store, t, _ = store_t
        await store.upsert_customer_profiles(t, [row("c1", 1.0, 5, 5000)], 10, 0)
        assert await store.get_customer_profile(t, "c1", 9.9) is not None
        assert await store.get_customer_profile(t, "c1", 10) is None
        assert await store.upsert_customer_profiles(t, [row("c1", 2.0, 1, 1)], 10, 11) == []
        got = await store.get_customer_profile(t, "c1", 12)
        assert got is not None and got.vector[0] == 2.0

    async def test_a_write_is_seen_by_the_next_read(self, store_t) -> None:
        """Reads after a write never return the cached old value."""
        store, t, _ = store_t
        await store.upsert_customer_profiles(t, [row("c1", 1.0, 1)], 60, 0)
        assert (await store.get_customer_profile(t, "c1", 0)).vector[0] == 1.0
        await store.upsert_customer_profiles(t, [row("c1", 2.0, 2)], 60, 0)
        assert (await store.get_customer_profile(t, "c1", 0)).vector[0] == 2.0
        assert await store.get_customer_profile(t, "nobody", 0) is None

    async def test_agent_profiles(self, store_t) -> None:
        store, t, _ = store_t
        a = ProfileRow("a1", np.array([1.0, -1.0], np.float32), 2, 10)
        assert await store.upsert_agent_profiles(t, [a], 0) == []
        older = ProfileRow("a1", np.array([5.0, 5.0], np.float32), 1, 10)
        assert await store.upsert_agent_profiles(t, [older], 0) == [0]
        got = await store.get_agent_profile(t, "a1")
        assert got is not None
        np.testing.assert_array_equal(got.vector, [1.0, -1.0])
        assert await store.get_agent_profile(t, "a2") is None

    async def test_tenants_do_not_see_each_other(self, store_t) -> None:
        store, t, other = store_t
        await store.upsert_customer_profiles(t, [row("c1", 1.0)], 60, 0)
        await store.upsert_agent_profiles(t, [ProfileRow("a1", np.ones(2, np.float32), 1, 1)], 0)
        await store.record_decision(t, record("d1", 0))
        assert await store.get_customer_profile(other, "c1", 0) is None
        assert await store.get_agent_profile(other, "a1") is None
        assert await store.get_decision(other, "d1", 0) is None
        assert await store.decisions(other, 0) == []
        assert not await store.record_outcome(other, "d1", {"sale": 1.0}, 0)


class TestModels:
    async def test_put_list_activate(self, store_t) -> None:
        store, t, other = store_t
        gen = np.random.default_rng(1)
        raws = [
            dump_model(version=v, W=gen.normal(size=DIMS), wc=gen.normal(size=3),
                       wa=gen.normal(size=2), b=0.1)
            for v in ("v1", "v2")
        ]
        models = [load_model(r, customer_dim=3, agent_dim=2) for r in raws]
        assert await store.active_model_version(t) == ""
        for m in models:
            await store.put_model(t, m)
        await store.set_active_model(t, "v2")
        assert await store.active_model_version(t) == "v2"
        got = await store.get_model(t, "v1")
        assert got is not None and got.raw == raws[0]
        np.testing.assert_array_equal(got.W, models[0].W)
        assert sorted(m.version for m in await store.list_models(t)) == ["v1", "v2"]
        assert await store.get_model(t, "v3") is None
        assert await store.active_model_version(other) == ""
        assert await store.list_models(other) == []


class TestDecisions:
    async def test_record_get_outcome(self, store_t) -> None:
        store, t, _ = store_t
        rec = record("d1", 5.0)
        await store.record_decision(t, rec)
        got = await store.get_decision(t, "d1", 6)
        assert got is not None
        assert got.decision == rec.decision
        assert got.customer_digest == "c1" and got.context == (("intent", 2.0),)
        assert got.outcomes == {}
        assert await store.record_outcome(t, "d1", {"sale": 1.0}, 7)
        assert await store.record_outcome(t, "d1", {"csat": 4.5}, 8)
        got = await store.get_decision(t, "d1", 9)
        assert got is not None and got.outcomes == {"sale": 1.0, "csat": 4.5}
        assert not await store.record_outcome(t, "nope", {"sale": 1.0}, 9)

    async def test_retention(self, store_t) -> None:
        store, t, _ = store_t
        await store.record_decision(t, record("d1", 0.0, ttl=10))
        await store.record_decision(t, record("d2", 1.0, ttl=10))
        assert [r.decision.decision_id for r in await store.decisions(t, 5)] == ["d1", "d2"]
        assert await store.get_decision(t, "d1", 10) is None
        assert not await store.record_outcome(t, "d1", {"sale": 1.0}, 10)
        assert [r.decision.decision_id for r in await store.decisions(t, 10)] == ["d2"]
        assert await store.sweep(10.5) >= 1
        assert [r.decision.decision_id for r in await store.decisions(t, 10.5)] == ["d2"]


class TestErasure:
    async def test_purge_customer_erases_profile_and_decisions(self, store_t) -> None:
        store, t, other = store_t
        await store.upsert_customer_profiles(t, [row("c1", 1.0), row("c2", 2.0)], 60, 0)
        await store.upsert_customer_profiles(other, [row("c1", 1.0)], 60, 0)
        await store.record_decision(t, record("d1", 0, digest="c1"))
        await store.record_decision(t, record("d2", 1, digest="c2"))
        await store.record_decision(t, record("d3", 2, digest="c1"))
        await store.record_outcome(t, "d1", {"sale": 1.0}, 3)
        assert await store.purge_customer(t, "c1") == 3
        assert await store.get_customer_profile(t, "c1", 4) is None
        assert await store.get_decision(t, "d1", 4) is None
        assert await store.get_decision(t, "d3", 4) is None
        assert [r.decision.decision_id for r in await store.decisions(t, 4)] == ["d2"]
        assert await store.get_customer_profile(t, "c2", 4) is not None
        assert await store.get_customer_profile(other, "c1", 4) is not None
        assert await store.purge_customer(t, "c1") == 0  # again: nothing left, no error

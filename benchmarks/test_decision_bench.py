"""The in-process decision: everything RouteContact's handler does after decoding
(pseudonymise, profile lookup, eligibility, scoring, policy, reservation,
decision record), no transport. 100 / 1,000 / 10,000 agents x 64 dims, per
policy; `baseline` is the reference measured in the same run.

Targets (2 vCPU): p99 <= 100 us at 1,000 agents, <= 250 us at 10,000."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from _util import percentiles_us, run_now
from support import tenant

from pairline.config import Settings
from pairline.domain import AgentStateRequest, AgentStatus, Channel, ContactRequest, EndReason
from pairline.model import dump_model
from pairline.service import ProfileIn, Service
from pairline.stores import MemoryStore
from pairline.testing import FakeClock

DIM = 64
SIZES = [100, 1_000, 10_000]
POLICIES = ["baseline", "greedy", "diagonal"]
N_CUSTOMERS = 2_000


def build(policy: str, n: int) -> Service:
    rng = np.random.default_rng(42)
    cfg = Settings(tenants=(tenant("acme", customer_dim=DIM, agent_dim=DIM, policy=policy,
                                   max_agents=20_000),))
    svc = Service(cfg, MemoryStore(), FakeClock())
    model = dump_model(version="bench", W=rng.normal(size=(DIM, DIM)).astype(np.float32) / DIM,
                       wc=rng.normal(size=DIM) / DIM, wa=rng.normal(size=DIM) / DIM, b=0.0)
    run_now(svc.upload_model("acme", model, activate=True))
    for lo in range(0, n, 10_000):
        batch = [ProfileIn(f"a{i}", rng.normal(size=DIM).astype(np.float32), 1, 1)
                 for i in range(lo, min(n, lo + 10_000))]
        run_now(svc.upsert_agent_profiles("acme", batch))
    run_now(svc.upsert_customer_profiles("acme", [
        ProfileIn(f"+{i}", rng.normal(size=DIM).astype(np.float32), 1, 1) for i in range(N_CUSTOMERS)
    ]))
    for i in range(n):
        run_now(svc.set_agent_state("acme", AgentStateRequest(
            f"a{i}", AgentStatus.AVAILABLE, (("q", 50),), (0, 4, 0, 0, 0))))
    return svc


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("policy", POLICIES)
def test_route_contact_in_process(benchmark, policy: str, n: int) -> None:  # type: ignore[no-untyped-def]
    benchmark.group = f"decision-{n}"
    svc = build(policy, n)
    ids = itertools.count()
    live: list[str] = []

    def setup() -> tuple[tuple[ContactRequest], dict[str, object]]:
        if live:  # keep the pool in steady state: the previous contact hangs up
            run_now(svc.end_contact("acme", live.pop(), EndReason.ABANDONED, 0.0))
        i = next(ids)
        req = ContactRequest(f"c{i}", "q", Channel.CHAT, customer_key=f"+{i % N_CUSTOMERS}")
        return (req,), {}

    def route(req: ContactRequest) -> None:
        d = run_now(svc.route_contact("acme", req))
        live.append(d.contact_id)
        assert d.agent_id

    benchmark.pedantic(route, setup=setup, rounds=3000, warmup_rounds=200)
    pct = percentiles_us(benchmark)
    benchmark.extra_info["policy"] = policy
    benchmark.extra_info["agents"] = n
    print(f"\n{policy:9s} n={n:6d}  p50 {pct['p50_us']:7.1f} us  p99 {pct['p99_us']:7.1f} us")

"""``python -m pairline.demo`` (``make demo``): the whole story in a few minutes.

1. **History.** A simulated sales line (the simulator of :mod:`pairline.sim`) runs
   a couple of days under the baseline policy (longest-idle agent), in process;
   each handled contact's outcome is drawn from the simulator's ground truth. The
   history is written as a ``pairline train`` CSV: outcome, mode, the customer
   profile and the agent profile the service would see (noisy copies of the
   truth's latent vectors), decision time.
2. **Training.** :func:`pairline.train.fit` fits the bilinear model from that file
   and compares it on held-out rows with the same model without interaction.
3. **Server.** A real ``pairline serve`` process on a free loopback port, its
   TOML configuration in a temporary directory: one tenant, policy ``priced``
   (the best of the policies on the simulated centers, see ``docs/policies.md``),
   ``benchmark = true`` with short ON/OFF slots so that many of them pass.
4. **Profiles.** The customer and agent profiles and the trained model are
   loaded through the ``Profiles`` RPCs (the model uploaded and activated).
5. **Traffic.** A simulated day of contacts goes through the server as a switch
   would drive it (:class:`pairline.sim.remote.GrpcSwitch`, paced in real time,
   ``--speed`` times faster than the scenario); each handled contact's outcome is
   drawn from the truth and sent with ``ReportOutcome``.
6. **Report.** The ON/OFF benchmark report (``Insights.GetBenchmarkReport``, as
   ``pairline report`` prints it), next to what only the simulator knows: the
   true success probability of the pairs made in ON and in OFF slots, and the
   gain of pairing every contact of the same day (in process, same contacts).
   Then the server is stopped with SIGTERM and waited for.

Everything is on 127.0.0.1, bounded in time (the traffic stops at a deadline
if the machine cannot keep the pace) and stops by itself. ``--json`` prints a
machine-readable summary on stdout (the narration then goes to stderr).
Exit status: 0 when every step worked and the server exited 0; 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import queue
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from pairline.domain import Channel, Mode
from pairline.sim.scenario import AgentGroup, PolicySpec, QueueSpec, Scenario, default_scenario
from pairline.sim.switch import Offer, Switch, SwitchSetup
from pairline.sim.truth import GroundTruth
from pairline.sim.workload import Workload, streams

TENANT = "demo"
POLICY = "priced"  # what ON slots route by; OFF slots route by the baseline
QUEUE = "sales"
OUTCOME = "success"  # the outcome name GrpcSwitch / InProcessSwitch report
BANNER = "pairline is serving on "
SERVER_START_TIMEOUT_S = 90.0
SERVER_GRACE_S = 2.0
SERVER_STOP_TIMEOUT_S = 20.0
PROFILE_BATCH = 10_000


class DemoError(Exception):
    """A step failed: the message says which and why."""


class _OutOfTime(Exception):
    """The traffic's wall-clock deadline passed (raised inside the engine's loop)."""


class _Terminated(BaseException):
    """SIGTERM to the demo itself: unwind so the server is stopped too."""


# ------------------------------------------------------------------ scenario


def demo_scenario(*, agents: int, hours: float, strength: float, customers: int) -> Scenario:
    """The simulator's default sales line (5 min lognormal calls, 15 s wrap-up, 3 min
    mean patience, about 86 % occupancy) with ``agents`` agents, ``customers``
    customers, a horizon of ``hours`` and an interaction of ``strength`` logit sd."""
    base = default_scenario(horizon_s=hours * 3600.0, n_customers=customers)
    q = base.queues[0]
    rate = 0.86 * agents / (q.handle.mean_s + base.wrap_up_s)
    return dataclasses.replace(
        base,
        queues=(QueueSpec(QUEUE, rate, q.handle, q.patience, q.channel),),
        agents=(AgentGroup(agents, ((QUEUE, 50),)),),
        name=f"demo-{agents}",
    ).with_truth(interaction_strength=strength)


# ------------------------------------------------------------------- history


def simulate_history(scenario: Scenario, truth: GroundTruth, seed: int) -> Any:
    """The scenario under the baseline policy, in process: a :class:`History` of
    every handled contact with the profiles the service saw and its drawn outcome."""
    from pairline.sim.engine import DONE, Engine
    from pairline.sim.run import switch_setup
    from pairline.sim.switch import InProcessSwitch
    from pairline.train import History

    workload = Workload.draw(scenario, seed)
    switch = InProcessSwitch(PolicySpec("baseline"), switch_setup(scenario, truth), seed=seed)
    log = Engine(scenario, workload, switch, truth.pair_prob()).run()
    done = log.state == DONE
    return History(
        outcome=log.success[done].astype(np.float64),
        mode=np.array([Mode(int(m)).name for m in log.mode[done]]),
        customer=truth.customer_profiles[workload.customer[done]],
        agent=truth.agent_profiles[log.agent[done]],
        decided_at_ms=np.round(log.answer_s[done] * 1000).astype(np.int64),
    )


# -------------------------------------------------------------------- server


def _free_env() -> dict[str, str]:
    """This environment without PAIRLINE_* (they would override the demo's config)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PAIRLINE_")}


def _libc() -> Any:
    if sys.platform != "linux":
        return None
    try:
        import ctypes

        return ctypes.CDLL(None)
    except OSError:
        return None


# Looked up here, in the parent: between fork and exec the child must not import.
_LIBC = _libc()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """The server gets SIGTERM when the demo process dies, even by SIGKILL."""
    _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def write_config(path: Path, *, api_key: str, secret: str, dim: int, slot_s: float,
                 on_share: float, stabilise_s: float, wrap_up_s: float) -> None:
    lines = [
        '# written by pairline.demo',
        'listen = "127.0.0.1:0"        # a free port, printed in the banner',
        f"grace_s = {SERVER_GRACE_S}",
        'log_level = "warning"',
        "log_json = true",
        "",
        "[[tenants]]",
        f'name = "{TENANT}"',
        f'api_key_sha256 = ["{hashlib.sha256(api_key.encode()).hexdigest()}"]',
        f"secret = {json.dumps(secret)}",
        f"customer_dim = {dim}",
        f"agent_dim = {dim}",
        f'policy = "{POLICY}"',
        "benchmark = true",
        f"slot_s = {slot_s!r}",
        f"on_share = {on_share!r}",
        f"stabilise_s = {stabilise_s!r}",
        f"wrap_up_s = {wrap_up_s!r}",
        "offer_timeout_s = 60.0",
    ]
    path.write_text("\n".join(lines) + "\n")


class ServerProcess:
    """``pairline serve --config FILE`` as a child process."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.log_path = log_path
        self.address = ""
        self.exit_code: int | None = None
        with log_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pairline.cli", "serve", "--config", str(config)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                env=_free_env(), text=True, bufsize=1,
                preexec_fn=_die_with_parent if _LIBC is not None else None,
            )
        self.pid = self.proc.pid

    def wait_serving(self, timeout_s: float = SERVER_START_TIMEOUT_S) -> str:
        """Read stdout until the banner; return the address."""
        lines: queue.Queue[str | None] = queue.Queue()
        out = self.proc.stdout
        assert out is not None

        def pump() -> None:
            for line in out:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, name="pairline-serve-stdout", daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DemoError(f"the server did not start within {timeout_s:g} s"
                                f"{self._tail()}")
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                code = self.proc.wait()
                raise DemoError(f"the server exited ({code}) before serving{self._tail()}")
            if line.startswith(BANNER):
                self.address = line.removeprefix(BANNER).split()[0]
                return self.address

    def _tail(self, n: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()[-n:]
        except OSError:
            return ""
        return (":\n  " + "\n  ".join(text)) if text else ""

    def stop(self, timeout_s: float = SERVER_STOP_TIMEOUT_S) -> int:
        """SIGTERM, then wait (SIGKILL after ``timeout_s``: exit code -9)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.exit_code = self.proc.returncode
        return self.exit_code


# ------------------------------------------------------------------ profiles


def load_profiles(channel: Any, api_key: str, truth: GroundTruth, setup: SwitchSetup,
                  model_raw: bytes) -> dict[str, Any]:
    """Customer and agent profiles, then the model (uploaded and activated), through
    the Profiles RPCs; returns what the server acknowledged."""
    from pairline._proto.pairline.v1 import profiles_pb2 as ppb
    from pairline._proto.pairline.v1 import profiles_pb2_grpc as ppb_grpc

    stub = ppb_grpc.ProfilesStub(channel)  # type: ignore[no-untyped-call]
    meta = (("authorization", f"Bearer {api_key}"),)
    now_ms = int(time.time() * 1000)
    agents = [ppb.AgentProfile(agent_id=a.agent_id, vector=v.tolist(), version=1,
                               source_time_ms=now_ms)
              for a, v in zip(setup.agents, truth.agent_profiles, strict=True)]
    got_a = stub.UpsertAgentProfiles(ppb.AgentProfileBatch(profiles=agents), metadata=meta,
                                     timeout=30)
    keys, vectors = list(setup.customer_keys), truth.customer_profiles

    def batches() -> Iterator[Any]:
        for i in range(0, len(keys), PROFILE_BATCH):
            yield ppb.CustomerProfileBatch(profiles=[
                ppb.CustomerProfile(customer_key=k, vector=v.tolist(), version=1,
                                    source_time_ms=now_ms)
                for k, v in zip(keys[i : i + PROFILE_BATCH], vectors[i : i + PROFILE_BATCH],
                                strict=True)])

    got_c = stub.UpsertCustomerProfiles(batches(), metadata=meta, timeout=60)
    uploaded = stub.UploadModel(ppb.UploadModelRequest(model=model_raw, activate=True),
                                metadata=meta, timeout=30)
    info = stub.GetModelInfo(ppb.GetModelInfoRequest(), metadata=meta, timeout=10)
    if not info.HasField("active") or info.active.version != uploaded.version:
        raise DemoError(f"model {uploaded.version} was uploaded but is not the active one")
    return {"customers_accepted": int(got_c.accepted), "customers_stale": int(got_c.stale),
            "agents_accepted": int(got_a.accepted), "agents_stale": int(got_a.stale),
            "model_version": info.active.version, "model_active": True}


# ------------------------------------------------------------------- traffic


@dataclasses.dataclass(slots=True)
class Handled:
    """One handled contact as the switch saw it."""

    contact: int  # workload index
    agent: int  # agent index
    mode: int
    success: bool
    decided_at: float  # Unix time when the decision came back


class Recorder:
    """A :class:`Switch` around another: records every decision and outcome, prints
    progress, and stops the run (raises :class:`_OutOfTime` from ``advance``) once
    the wall-clock ``deadline`` (monotonic) has passed."""

    def __init__(self, inner: Switch, *, deadline: float, horizon_s: float,
                 say: Any, every_s: float = 15.0) -> None:
        self.inner = inner
        self.deadline = deadline
        self.horizon_s = horizon_s
        self.say = say
        self.every_s = every_s
        self.started = time.monotonic()
        self._next = self.started + every_s
        self.sim_t = 0.0
        self.decided_at: dict[str, float] = {}
        self.modes: Counter[str] = Counter()
        self.handled: list[Handled] = []
        self.routed = 0
        self.abandoned = 0
        self.closed = False

    def advance(self, t: float) -> None:
        now = time.monotonic()
        if now > self.deadline:
            raise _OutOfTime
        self.sim_t = t
        if now >= self._next:
            self._next = now + self.every_s
            self.say(f"      {_clock(t)} of {_clock(self.horizon_s)} simulated, "
                     f"{now - self.started:4.0f} s: {self.routed} contacts, decisions "
                     + ", ".join(f"{k} {v}" for k, v in sorted(self.modes.items())))
        self.inner.advance(t)

    def _decided(self, offer: Offer | None) -> Offer | None:
        if offer is not None:
            self.decided_at[offer.decision_id] = time.time()
            self.modes[Mode(offer.mode).name] += 1
        return offer

    def route(self, contact_id: str, queue: str, channel: Channel,
              customer_key: str) -> Offer | None:
        self.routed += 1
        return self._decided(self.inner.route(contact_id, queue, channel, customer_key))

    def ready(self, agent_id: str) -> Offer | None:
        return self._decided(self.inner.ready(agent_id))

    def confirm(self, offer: Offer) -> None:
        self.inner.confirm(offer)

    def end(self, contact_id: str, wrap_up_s: float) -> None:
        self.inner.end(contact_id, wrap_up_s)

    def abandon(self, contact_id: str) -> None:
        self.abandoned += 1
        self.inner.abandon(contact_id)

    def outcome(self, offer: Offer, success: bool) -> None:
        self.inner.outcome(offer, success)
        self.handled.append(Handled(
            int(offer.contact_id[1:]), int(offer.agent_id[1:]), offer.mode, success,
            self.decided_at.pop(offer.decision_id, math.nan)))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.inner.close()


def _clock(t: float) -> str:
    h, m = divmod(int(t // 60), 60)
    return f"{h:02d}:{m:02d}"


# --------------------------------------------------------------------- truth


def _rate(p: np.ndarray) -> float | None:
    return float(p.mean()) if p.size else None


def truth_of_run(handled: list[Handled], workload: Workload, truth: GroundTruth,
                 schedule: Any) -> dict[str, Any]:
    """What the simulator knows about the ON and OFF decisions the report compares:
    the mean true success probability of the pairs made (the report's figures
    without the outcome draw's noise), and the drawn outcome rates."""
    prob = truth.pair_prob()
    rows: dict[str, list[tuple[float, bool]]] = {"on": [], "off": []}
    mismatched = 0
    for h in handled:
        side = {Mode.PAIRED: "on", Mode.CONTROL: "off"}.get(Mode(h.mode))
        if side is None or math.isnan(h.decided_at):
            continue
        on, compared = schedule.state(QUEUE, h.decided_at)
        if on != (side == "on"):
            mismatched += 1  # decided at a slot boundary: the server's clock saw the other side
            continue
        if compared:
            rows[side].append((prob(int(workload.customer[h.contact]), h.agent), h.success))
    out: dict[str, Any] = {"slot_boundary_mismatches": mismatched}
    for side, r in rows.items():
        p = np.array([x for x, _ in r])
        out[f"{side}_count"] = len(r)
        out[f"{side}_expected_rate"] = _rate(p)
        out[f"{side}_drawn_rate"] = _rate(np.array([float(s) for _, s in r]))
    on, off = out["on_expected_rate"], out["off_expected_rate"]
    out["expected_gain"] = on / off - 1 if on is not None and off else None
    return out


def in_process_reference(scenario: Scenario, workload: Workload, truth: GroundTruth,
                         model_raw: bytes, seed: int) -> dict[str, Any]:
    """The same contacts in process, every one routed by the baseline, then every one
    by the demo's policy (:data:`POLICY`) with the trained model: the true (expected)
    outcome rates."""
    from pairline.sim.run import run_policy, switch_setup

    setup = dataclasses.replace(switch_setup(scenario, truth), model=model_raw)
    rows = {p: run_policy(scenario, workload, truth, PolicySpec(p), setup=setup,
                          service_seed=seed)
            for p in ("baseline", POLICY)}
    base, pol = rows["baseline"], rows[POLICY]
    b, d = base["expected_outcome_rate"], pol["expected_outcome_rate"]
    return {
        "policy": POLICY,
        "baseline_expected_rate": b,
        "policy_expected_rate": d,
        "expected_gain": d / b - 1 if b and d is not None else None,
        "baseline_service_level": base["service_level"],
        "policy_service_level": pol["service_level"],
        "baseline_occupancy_spread": base["occupancy_spread"],
        "policy_occupancy_spread": pol["occupancy_spread"],
    }


# ---------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pairline.demo",
        description="Simulate a history, train a model, run a real server with ON/OFF "
                    "benchmarking under simulated traffic, and compare its report with "
                    "the simulator's truth.")
    p.add_argument("--seed", type=int, default=0, help="seed of everything simulated (0)")
    p.add_argument("--hours", type=float, default=24.0,
                   help="simulated hours of traffic through the server (24)")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--minutes", type=float, default=1.5,
                      help="real minutes the traffic should take (1.5): sets --speed")
    pace.add_argument("--speed", type=float,
                      help="simulated seconds per real second (overrides --minutes)")
    p.add_argument("--history-hours", type=float, default=48.0,
                   help="simulated hours of baseline history to train on (48)")
    p.add_argument("--agents", type=int, default=40, help="agents in the center (40)")
    p.add_argument("--customers", type=int, default=20_000,
                   help="customer population (20000)")
    p.add_argument("--strength", type=float, default=0.8,
                   help="the truth's interaction strength, logit sd (0.8; the simulator's "
                        "default scenario uses 0.2, where pairing gains a few percent)")
    p.add_argument("--slot-s", type=float, default=3.0,
                   help="benchmark slot length in real seconds (3)")
    p.add_argument("--stabilise-s", type=float, default=0.25,
                   help="real seconds after an ON/OFF switch left out of the report (0.25)")
    p.add_argument("--on-share", type=float, default=0.5, help="share of ON slots (0.5)")
    p.add_argument("--max-minutes", type=float,
                   help="hard limit on the traffic's wall time (default: twice the planned "
                        "time plus a minute); the run stops there and reports what it has")
    p.add_argument("--workdir", metavar="DIR",
                   help="keep the history CSV, model, config and server log here "
                        "(default: a temporary directory, removed at the end)")
    p.add_argument("--json", action="store_true",
                   help="print a JSON summary on stdout (the narration goes to stderr)")
    return p


def _check(ns: argparse.Namespace, p: argparse.ArgumentParser) -> None:
    if ns.hours <= 0 or ns.history_hours <= 0:
        p.error("--hours and --history-hours must be > 0")
    if ns.speed is not None and ns.speed <= 0:
        p.error("--speed must be > 0")
    if ns.speed is None and ns.minutes <= 0:
        p.error("--minutes must be > 0")
    if ns.agents < 2 or ns.customers < 1:
        p.error("--agents >= 2 and --customers >= 1")
    if ns.strength < 0:
        p.error("--strength must be >= 0")
    if not (ns.slot_s > 0 and 0 <= ns.stabilise_s < ns.slot_s and 0 < ns.on_share < 1):
        p.error("--slot-s > 0, 0 <= --stabilise-s < --slot-s, 0 < --on-share < 1")
    if ns.max_minutes is not None and ns.max_minutes <= 0:
        p.error("--max-minutes must be > 0")


def _report_dict(rep: Any) -> dict[str, Any]:
    from google.protobuf import json_format

    out: dict[str, Any] = json_format.MessageToDict(
        rep, always_print_fields_with_no_presence=True, preserving_proto_field_name=True)
    for k in ("on_count", "off_count"):  # int64 comes out as a string in proto JSON
        out[k] = int(out.get(k, 0))
    for s in out.get("strata", []):
        for k in ("on_count", "off_count"):
            s[k] = int(s.get(k, 0))
    return out


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:+.2%}"


def _f4(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def run(ns: argparse.Namespace, out: IO[str], workdir: Path) -> dict[str, Any]:
    """The six steps; returns the summary (``ok``: the server exited 0). A step that
    fails raises (:class:`DemoError`, a gRPC error), the server stopped first."""
    from pairline.cli import format_report as format_benchmark
    from pairline.sim.engine import Engine, customer_key
    from pairline.sim.remote import GrpcSwitch
    from pairline.sim.run import switch_setup
    from pairline.train import fit, write_history
    from pairline.train import format_report as format_training

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    t_start = time.monotonic()
    summary: dict[str, Any] = {"ok": False, "seed": ns.seed, "workdir": str(workdir)}
    live = demo_scenario(agents=ns.agents, hours=ns.hours, strength=ns.strength,
                         customers=ns.customers)
    past = dataclasses.replace(live, horizon_s=ns.history_hours * 3600.0,
                               warmup_s=min(1800.0, ns.history_hours * 360.0))
    speed = ns.speed if ns.speed is not None else live.horizon_s / (ns.minutes * 60.0)
    planned_s = live.horizon_s / speed
    limit_s = ns.max_minutes * 60.0 if ns.max_minutes is not None else 2 * planned_s + 60.0
    ss = streams(ns.seed)
    truth = GroundTruth.for_scenario(live, ss["truth"], ss["profiles"])
    history_seed, live_seed = (int(s) for s in
                               np.random.SeedSequence([ns.seed, 7]).generate_state(2))
    summary["scenario"] = {
        "agents": live.n_agents, "customers": live.n_customers, "queue": QUEUE,
        "arrivals_per_hour": round(live.queues[0].arrival_rate_per_s * 3600, 1),
        "mean_handle_s": live.queues[0].handle.mean_s, "wrap_up_s": live.wrap_up_s,
        "offered_load": round(live.offered_load(), 4), "profile_dim": live.truth.dim,
        "interaction_strength": live.truth.interaction_strength,
        "interaction_alignment": live.truth.interaction_alignment,
    }
    say(f"pairline demo (seed {ns.seed}): a simulated sales line of {live.n_agents} voice "
        f"agents, {live.queues[0].arrival_rate_per_s * 3600:.0f} calls/h, "
        f"{live.queues[0].handle.mean_s / 60:g} min calls, "
        f"about {live.offered_load():.0%} busy;")
    say(f"{live.n_customers} customers. In the simulator's ground truth who talks to whom "
        f"matters (interaction {live.truth.interaction_strength:g} logit sd).")

    # 1. History ------------------------------------------------------------------
    say()
    say(f"[1/6] History: {ns.history_hours:g} simulated hours routed by the baseline "
        "(longest-idle agent), in process; outcomes drawn from the truth")
    t = time.monotonic()
    history = simulate_history(past, truth, history_seed)
    history_path = workdir / "history.csv"
    write_history(history_path, history)
    summary["history"] = {"path": str(history_path), "rows": len(history),
                          "success_rate": float(history.outcome.mean()),
                          "modes": dict(Counter(history.mode.tolist())),
                          "seconds": round(time.monotonic() - t, 2)}
    say(f"      {len(history)} handled contacts, success rate {history.outcome.mean():.3f} "
        f"-> {history_path}")
    say(f"      columns: outcome, mode, c_0..c_{history.customer_dim - 1} (customer profile), "
        f"a_0..a_{history.agent_dim - 1} (agent profile), decided_at_ms")

    # 2. Training -----------------------------------------------------------------
    say()
    say("[2/6] Training (pairline.train.fit on the CSV): interaction model vs "
        "no-interaction model, held-out rows")
    version = f"demo-seed{ns.seed}"
    model, metrics = fit(history_path, version=version, outcome=OUTCOME, seed=ns.seed)
    model_path = workdir / "model.npz"
    model_path.write_bytes(model.raw)
    say("      " + format_training(metrics, str(model_path)).replace("\n", "\n      "))
    ll_i = metrics["heldout"]["interaction"]["log_loss"]
    ll_n = metrics["heldout"]["no_interaction"]["log_loss"]
    beats = ll_i <= ll_n
    say(f"      held-out log loss {ll_i:.4f} vs {ll_n:.4f} without interaction: "
        + ("the interaction model is better" if ll_i < ll_n else
           "no better" if ll_i == ll_n else "the interaction model is WORSE"))
    summary["training"] = {
        "model_path": str(model_path), "version": version,
        "rows_train": metrics["rows_train"], "rows_heldout": metrics["rows_heldout"],
        "modes_used": metrics["modes_used"], "heldout": metrics["heldout"],
        "interaction_gain": metrics["interaction_gain"], "warning": metrics["warning"],
        "beats_no_interaction": beats,
    }

    # 3. Server -------------------------------------------------------------------
    say()
    api_key = "demo-" + secrets.token_urlsafe(18)
    secret = secrets.token_hex(16)
    config_path = workdir / "pairline.toml"
    write_config(config_path, api_key=api_key, secret=secret, dim=live.truth.dim,
                 slot_s=ns.slot_s, on_share=ns.on_share, stabilise_s=ns.stabilise_s,
                 wrap_up_s=live.wrap_up_s)
    say(f"[3/6] Server: pairline serve --config {config_path}")
    say(f"      tenant {TENANT!r}: policy {POLICY}, benchmark ON/OFF in {ns.slot_s:g} s slots "
        f"(ON share {ns.on_share:g}, stabilise {ns.stabilise_s:g} s); "
        f"log -> {workdir / 'server.log'}")
    server = ServerProcess(config_path, workdir / "server.log")
    summary["server"] = {"pid": server.pid, "config": str(config_path),
                         "log": str(workdir / "server.log"), "policy": POLICY,
                         "slot_s": ns.slot_s, "on_share": ns.on_share,
                         "stabilise_s": ns.stabilise_s}
    import grpc

    channel = None
    try:
        t = time.monotonic()
        address = server.wait_serving()
        summary["server"]["address"] = address
        summary["server"]["start_s"] = round(time.monotonic() - t, 2)
        say(f"      serving on {address} (pid {server.pid}, ready in "
            f"{time.monotonic() - t:.1f} s)")
        channel = grpc.insecure_channel(address)

        # 4. Profiles and model -----------------------------------------------------
        say()
        setup = switch_setup(live, truth)
        assert [customer_key(i) for i in range(live.n_customers)] == list(setup.customer_keys)
        t = time.monotonic()
        loaded = load_profiles(channel, api_key, truth, setup, model.raw)
        summary["profiles"] = {**loaded, "seconds": round(time.monotonic() - t, 2)}
        say(f"[4/6] Profiles RPCs: {loaded['customers_accepted']} customer profiles, "
            f"{loaded['agents_accepted']} agent profiles, model {loaded['model_version']} "
            f"uploaded and active ({time.monotonic() - t:.1f} s)")

        # 5. Traffic ----------------------------------------------------------------
        say()
        workload = Workload.draw(live, live_seed)
        say(f"[5/6] Traffic: {ns.hours:g} simulated hours ({len(workload)} contacts) through "
            f"the server as a switch would, {speed:.0f}x real time "
            f"(about {planned_s / 60:.1f} min, at most {limit_s / 60:.1f})")
        # Agents log in through GrpcSwitch; profiles and model are loaded already.
        login = SwitchSetup(agents=setup.agents, wrap_up_s=setup.wrap_up_s,
                            customer_dim=setup.customer_dim, agent_dim=setup.agent_dim)
        t = time.monotonic()
        recorder = Recorder(GrpcSwitch(login, api_key, channel=channel, speed=speed),
                            deadline=t + limit_s, horizon_s=live.horizon_s, say=say)
        cut = False
        try:
            Engine(live, workload, recorder, truth.pair_prob()).run()
        except _OutOfTime:
            cut = True
        finally:
            recorder.close()
        wall = time.monotonic() - t
        sim_s = live.horizon_s if not cut else recorder.sim_t
        modes = dict(recorder.modes)
        summary["traffic"] = {
            "contacts": recorder.routed, "handled": len(recorder.handled),
            "abandoned": recorder.abandoned, "decisions_by_mode": modes,
            "speed": round(speed, 1), "achieved_speed": round(sim_s / wall, 1),
            "simulated_s": round(sim_s, 1), "seconds": round(wall, 2), "cut_short": cut,
        }
        say(f"      {recorder.routed} contacts, {len(recorder.handled)} handled, "
            f"{recorder.abandoned} abandoned; decisions "
            + ", ".join(f"{k} {v}" for k, v in sorted(modes.items()))
            + f"; {wall:.0f} s ({sim_s / wall:.0f}x achieved)")
        if cut:
            why = " (the machine could not keep the pace)" if limit_s > planned_s else ""
            say(f"      stopped at {_clock(sim_s)} simulated: the {limit_s / 60:.1f} min "
                f"limit passed{why}")

        # 6. Report -----------------------------------------------------------------
        say()
        from pairline._proto.pairline.v1 import insights_pb2 as ipb
        from pairline._proto.pairline.v1 import insights_pb2_grpc as ipb_grpc

        rep = ipb_grpc.InsightsStub(channel).GetBenchmarkReport(  # type: ignore[no-untyped-call]
            ipb.GetBenchmarkReportRequest(outcome=OUTCOME),
            metadata=(("authorization", f"Bearer {api_key}"),), timeout=30)
        summary["report"] = _report_dict(rep)
        say(f"[6/6] Benchmark report (Insights.GetBenchmarkReport, as `pairline report "
            f"--outcome {OUTCOME}` prints it):")
        say()
        say("      " + format_benchmark(rep).replace("\n", "\n      "))
    finally:
        if channel is not None:
            channel.close()
        code = server.stop()
        summary["server"]["exit_code"] = code
        summary["server"]["stopped"] = server.proc.poll() is not None

    from pairline.benchmark import SlotSchedule

    schedule = SlotSchedule(secret, ns.slot_s, ns.on_share, ns.stabilise_s)
    known = truth_of_run(recorder.handled, workload, truth, schedule)
    reference = in_process_reference(live, workload, truth, model.raw, ns.seed)
    summary["truth"] = {**known, "in_process": reference}
    say()
    say("      What only the simulator knows (the true success probability of each pair):")
    say(f"      - the same ON/OFF decisions: ON {_f4(known['on_expected_rate'])} "
        f"(n={known['on_count']}), OFF {_f4(known['off_expected_rate'])} "
        f"(n={known['off_count']}): true gain {_pct(known['expected_gain'])}")
    estimated = rep.relative_estimable
    if estimated:
        say(f"        (the report's {_pct(rep.relative_gain)} is that plus the noise of the "
            f"drawn outcomes, 95% CI [{rep.ci_low:+.2%}, {rep.ci_high:+.2%}])")
    say(f"      - the day's {len(workload)} contacts in process, all baseline vs all {POLICY} "
        f"with this model: {_f4(reference['baseline_expected_rate'])} vs "
        f"{_f4(reference['policy_expected_rate'])}: {_pct(reference['expected_gain'])}")
    gain = known["expected_gain"]
    contains = estimated and gain is not None and rep.ci_low <= gain <= rep.ci_high
    summary["truth"]["ci_contains_true_gain"] = contains
    if estimated:
        say("      The report's 95% interval " + ("contains" if contains else "does not contain")
            + " the true gain of its ON/OFF decisions.")
    else:
        say("      The report could not estimate a relative gain "
            f"({rep.relative_reason or rep.reason}): run longer.")
    say()
    stopped_ok = code == 0
    say(f"Server stopped (SIGTERM, exit {code}). Total {time.monotonic() - t_start:.0f} s.")
    checks = {
        "model_beats_no_interaction": beats,
        "paired_decisions": modes.get("PAIRED", 0) > 0,
        "control_decisions": modes.get("CONTROL", 0) > 0,
        "report_on_off": summary["report"]["on_count"] > 0 and summary["report"]["off_count"] > 0,
        "server_exit_0": stopped_ok,
    }
    summary["checks"] = checks
    summary["ok"] = stopped_ok
    summary["wall_s"] = round(time.monotonic() - t_start, 2)
    return summary


@contextlib.contextmanager
def _workdir(path: str | None) -> Iterator[Path]:
    if path:
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        yield p
    else:
        with tempfile.TemporaryDirectory(prefix="pairline-demo-") as tmp:
            yield Path(tmp)


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM to the demo raises, so ``finally`` blocks stop the server."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: let the cleanup finish
        raise _Terminated

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    ns = parser.parse_args(argv)
    _check(ns, parser)
    from pairline.logs import configure

    configure("warning")
    out = sys.stderr if ns.json else sys.stdout
    try:
        with _sigterm_unwinds(), _workdir(ns.workdir) as workdir:
            summary = run(ns, out, workdir)
            summary["workdir_kept"] = bool(ns.workdir)
            if not ns.workdir:
                print(f"(the files in {workdir} are removed now: --workdir DIR keeps them)",
                      file=out)
    except (DemoError, OSError) as exc:
        print(f"pairline demo: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a failed RPC, mostly: say which, briefly
        import grpc

        if isinstance(exc, grpc.RpcError):
            err: Any = exc
            print(f"pairline demo: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
        raise
    except (KeyboardInterrupt, _Terminated):
        print("pairline demo: interrupted (the server was stopped)", file=sys.stderr)
        return 130
    if ns.json:
        json.dump(summary, sys.stdout, indent=2)
        print()
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

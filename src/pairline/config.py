"""One frozen Settings object, built once at start (TOML file + PAIRLINE_* env), passed inward.

Nothing below the entry point reads ``os.environ``: :func:`load_settings` takes the
environment as an argument.
"""

from __future__ import annotations

import hashlib
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from pairline.security import ApiKey, build_index, parse_keys, read_tls, tenant_keys

POLICIES = ("baseline", "greedy", "diagonal", "priced")

DEMO_TENANT = "demo"
DEMO_API_KEY = "demo-key-change-me"


def hash_api_key(key: str) -> str:
    """The form in which API keys are stored in configuration (hex SHA-256)."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class TenantConfig:
    """One operator. Keys are held only as SHA-256 hashes."""

    # Tenant name: in logs, metric labels and store keys (1..64 chars).
    name: str
    # SHA-256 (hex) of each API key; `api_keys` in a file takes plain keys (for
    # development) and hashes them at load.
    api_key_sha256: tuple[str, ...]
    # HMAC-SHA256 secret for pseudonymising customer keys (hex or text).
    secret: str = field(repr=False)
    # Lengths of customer and agent profile vectors (1..4096).
    customer_dim: int = 16
    agent_dim: int = 16
    # Pairing policy for every queue, and exceptions per queue.
    policy: str = "baseline"
    queue_policies: tuple[tuple[str, str], ...] = ()
    # Monitor mode: decisions follow the baseline; the policy's choice and both
    # predicted outcomes are recorded with each decision (shadow fields).
    monitor: bool = False
    # diagonal: widen the bands of stronger agents (0 = balanced utilisation).
    skew: float = 0.0
    # Contact surplus: pairing key credit per 20 s waited (0 = pairing only).
    wait_weight: float = 0.0
    # Contact surplus: how many of the oldest top-priority contacts are weighed.
    window: int = 32
    # Solve the assignment when several agents are free and contacts wait.
    batch: bool = True
    # Proficiency relaxation (bullseye): steps of (waited_s, at_most): once a
    # contact has waited waited_s, it needs at most that proficiency.
    # E.g. ((30, 60), (90, 0)): after 30 s any 60+ agent, after 90 s anyone.
    relax_steps: tuple[tuple[float, int], ...] = ()
    # ON/OFF benchmarking: pairing alternates ON and OFF in slots of slot_s per
    # queue (ON with probability on_share, keyed so the switch cannot know);
    # OFF slots route by the baseline with mode CONTROL; decisions within
    # stabilise_s after a change are left out of the comparison.
    benchmark: bool = False
    slot_s: float = 300.0
    on_share: float = 0.5
    stabilise_s: float = 30.0
    # Key of the ON/OFF slot schedule (a secret: at least 16 chars, never logged).
    # Empty: the schedule is keyed by `secret`, so rotating the secret reshuffles
    # which slots are ON. On a rotation, set the old secret here and the schedule
    # stays put (if the old secret leaked, set a fresh key instead: the schedule
    # then changes once, as it would with the new secret).
    benchmark_key: str = field(default="", repr=False)
    # A model file loaded and activated at start (optional).
    model_path: str = ""
    # Default wrap-up after a handled contact; how long a reservation waits for
    # ConfirmDecision before it expires.
    wrap_up_s: float = 10.0
    offer_timeout_s: float = 15.0
    # How long decisions (with their outcomes) and customer profiles are kept
    # (retention policy): more than 0, at most 36500 days (nothing personal is
    # kept without a time limit).
    decision_ttl_days: float = 90.0
    profile_ttl_days: float = 365.0
    # Limits per tenant: waiting contacts, known agents (RESOURCE_EXHAUSTED beyond),
    # and queues in use (with an agent serving it or a live contact in it): a call
    # naming one more queue than this gets RESOURCE_EXHAUSTED (queues left without
    # agents and contacts are forgotten first), so stray queue names cannot grow
    # the state, the metrics and GetQueueStats without bound.
    max_waiting: int = 100_000
    max_agents: int = 50_000
    max_queues: int = 1_000
    # A waiting contact with preferred agents is held for one of them that is free
    # (not handed to another agent asking for work) for at most this long after it
    # arrived: a preferred agent that became free without a call (wrap-up over) may
    # never ask.
    preferred_hold_s: float = 30.0
    # Overload (see pairline.limits): requests (and stream events) per second,
    # tokens banked (0: one second's worth), concurrent calls; 0 = unlimited.
    rate_per_s: float = 0.0
    rate_burst: float = 0.0
    max_concurrent_rpcs: int = 0
    # Privacy (issue #6). A waiting or live contact's customer data (digest,
    # profile) is dropped once it is this old, should the switch never end it
    # (more than 0, at most 36500 days' worth).
    contact_data_ttl_s: float = 86_400.0
    # Previous secrets in their rotation overlap: (secret, unix s until which
    # lookups still try it). In TOML: previous_secrets = [{secret = "...",
    # until = 2026-12-31T00:00:00Z}] (a datetime, or unix seconds).
    previous_secrets: tuple[tuple[str, float], ...] = field(default=(), repr=False)
    # Deletion deadlines: 30 business days in this time zone, skipping weekends
    # and these ISO dates; or deletion_deadline_days calendar days if sooner
    # (0 = no stricter deadline).
    timezone: str = "UTC"
    holidays: tuple[str, ...] = ()
    deletion_deadline_days: float = 0.0
    # Open deletion tickets due by the end of this many business days from today
    # (tenant calendar; 0 = today) count as due_soon in pairline_deletion_tickets.
    deletion_due_soon_business_days: int = 5

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", self.name or ""):
            raise ValueError(
                "tenant name must be 1..64 letters, digits, '_', '.' or '-' "
                f"(it is part of every Redis key), not {self.name!r}"
            )
        if not self.api_key_sha256:
            raise ValueError(f"tenant {self.name}: at least one api_key_sha256 is needed")
        for h in self.api_key_sha256:
            if len(h) != 64 or any(c not in "0123456789abcdef" for c in h):
                raise ValueError(
                    f"tenant {self.name}: api_key_sha256 entries are 64 lowercase hex digits "
                    "(the SHA-256 of the key); put plain keys in api_keys"
                )
        if len(self.secret) < 16:
            raise ValueError(f"tenant {self.name}: secret must be at least 16 chars")
        if self.benchmark_key and len(self.benchmark_key) < 16:
            raise ValueError(
                f"tenant {self.name}: benchmark_key must be at least 16 chars (or empty)"
            )
        if not (1 <= self.customer_dim <= 4096 and 1 <= self.agent_dim <= 4096):
            raise ValueError(f"tenant {self.name}: dimensions must be 1..4096")
        for queue, policy in (("*", self.policy), *self.queue_policies):
            if policy not in POLICIES:
                raise ValueError(
                    f"tenant {self.name}: unknown policy {policy!r} for queue {queue!r} "
                    f"(one of {', '.join(POLICIES)})"
                )
        if not 1 <= self.max_queues <= 1_000_000:
            raise ValueError(f"tenant {self.name}: max_queues must be 1..1,000,000")
        if not 0 <= self.preferred_hold_s <= 86_400:  # (also refuses nan)
            raise ValueError(f"tenant {self.name}: preferred_hold_s must be 0..86,400")
        if self.skew < 0 or self.wait_weight < 0 or not 1 <= self.window <= 1024:
            raise ValueError(f"tenant {self.name}: skew, wait_weight >= 0; window 1..1024")
        if self.slot_s <= 0 or not 0 < self.on_share < 1 or not 0 <= self.stabilise_s < self.slot_s:
            raise ValueError(
                f"tenant {self.name}: slot_s > 0, 0 < on_share < 1, 0 <= stabilise_s < slot_s"
            )
        waits = [w for w, _ in self.relax_steps]
        if waits != sorted(waits) or any(
            w < 0 or not 0 <= p <= 100 for w, p in self.relax_steps
        ):
            raise ValueError(
                f"tenant {self.name}: relax_steps are (waited_s >= 0, at_most 0..100) "
                "in increasing waited_s"
            )
        if self.offer_timeout_s <= 0 or self.wrap_up_s < 0:
            raise ValueError(f"tenant {self.name}: offer_timeout_s > 0 and wrap_up_s >= 0")
        if self.rate_per_s < 0 or self.rate_burst < 0 or self.max_concurrent_rpcs < 0:
            raise ValueError(
                f"tenant {self.name}: rate_per_s, rate_burst, max_concurrent_rpcs >= 0"
            )
        _check_privacy(self)


# Retention settings of personal data (name, largest value): each must be a
# finite time above 0, since 0 or less would store records without a time to
# live. The bound (100 years) keeps every time to live one Redis can hold.
MAX_RETENTION_DAYS = 36_500.0
_RETENTION = (
    ("decision_ttl_days", MAX_RETENTION_DAYS),
    ("profile_ttl_days", MAX_RETENTION_DAYS),
    ("contact_data_ttl_s", MAX_RETENTION_DAYS * 86_400),
)


def _check_retention(t: TenantConfig) -> None:
    for name, most in _RETENTION:
        value = getattr(t, name)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not (math.isfinite(value) and 0 < value <= most)
        ):
            raise ValueError(
                f"tenant {t.name}: {name} must be more than 0 and at most {most:,.0f} "
                f"(nothing personal is kept without a time limit), not {value!r}"
            )


def _check_privacy(t: TenantConfig) -> None:
    import datetime as dt
    import zoneinfo

    _check_retention(t)
    for secret, until in t.previous_secrets:
        if len(secret) < 16 or until <= 0:
            raise ValueError(
                f"tenant {t.name}: previous_secrets need a secret of at least 16 chars "
                "and an `until` time"
            )
        if secret == t.secret:
            raise ValueError(f"tenant {t.name}: a previous secret equals the current one")
    try:
        zoneinfo.ZoneInfo(t.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"tenant {t.name}: unknown timezone {t.timezone!r}") from None
    for h in t.holidays:
        try:
            dt.date.fromisoformat(h)
        except (TypeError, ValueError):
            raise ValueError(
                f"tenant {t.name}: holidays are ISO dates (YYYY-MM-DD), not {h!r}"
            ) from None
    if not 0 <= t.deletion_deadline_days <= 3650:
        raise ValueError(f"tenant {t.name}: deletion_deadline_days 0..3650")
    if not 0 <= t.deletion_due_soon_business_days <= 30:
        raise ValueError(f"tenant {t.name}: deletion_due_soon_business_days 0..30")


@dataclass(frozen=True, slots=True)
class Settings:
    # gRPC address HOST:PORT (port 0 = any free port).
    listen: str = "127.0.0.1:50051"
    # On SIGTERM / SIGINT: health NOT_SERVING, then in-flight calls get this long.
    grace_s: float = 10.0
    # Log level (debug, info, warning, error) and JSON lines (false = console).
    log_level: str = "info"
    log_json: bool = True
    # Share of routing decisions logged as one ``decision`` event each (0..1;
    # 0 = none, 1 = every one): tenant, rpc, request id, decision id, mode,
    # policy, latency, model version; never a customer key. Logged at info.
    decision_log_sample: float = 0.0
    # gRPC core experiments for `pairline serve`, as GRPC_EXPERIMENTS (which wins
    # when set in the environment; grpc reads it once, at import). The default
    # turns off the EventEngine listener: the Python server then takes about 20%
    # less CPU per call (fewer thread hops per message). Empty = grpc's defaults.
    grpc_experiments: str = "-event_engine_listener"
    # How often expired reservations and retention are swept, in seconds.
    sweep_interval_s: float = 0.25
    # Largest gRPC message received or sent (profile batches, model uploads).
    max_message_bytes: int = 64 * 1024 * 1024
    # Embedded store: decisions kept in memory per tenant (oldest dropped first).
    memory_max_decisions: int = 1_000_000
    # Shared state for replicas: redis://, rediss://, unix:// or
    # redis+cluster://host:port[,host:port...]; empty = the embedded store.
    redis_url: str = ""
    # Customer profiles each replica keeps in memory (per tenant, LRU).
    profile_cache_size: int = 100_000
    # A Redis call that takes longer fails (routing then degrades to the baseline).
    redis_timeout_s: float = 0.25
    # While Redis is out of reach: route alone from this replica's own state (mode
    # DEGRADED), or refuse with UNAVAILABLE so the switch retries on a replica that
    # does. With several replicas, let exactly one route alone: replicas deciding
    # on their own at once can give one agent or contact twice.
    outage_routing: bool = True
    # Transport (see pairline.security): TLS with cert + key; mutual TLS when a
    # client CA is given too (clients without a certificate it signed cannot call).
    tls_cert_path: str = ""
    tls_key_path: str = ""
    tls_client_ca_path: str = ""
    # Keys with roles, re-read when the file changes (polled every keys_reload_s)
    # and on SIGHUP: add and revoke keys without a restart.
    keys_file: str = ""
    keys_reload_s: float = 2.0
    # Calls in the server at once (streams count while open); beyond: RESOURCE_EXHAUSTED.
    max_concurrent_rpcs: int = 10_000
    # Embedded store: directory of the durable privacy records (opt-outs,
    # deletion tickets, tombstones, audit). Empty: kept in memory only, which
    # is NOT durable (the server warns at start); set it in production.
    data_dir: str = ""
    # How often the deletion worker looks for open tickets, in seconds (it
    # also wakes at once on a new request). 0: no worker in this process
    # (a replica that only routes; tickets wait for a process that has one).
    deletion_interval_s: float = 5.0
    # Prometheus /metrics over HTTP on HOST:PORT; empty = not served.
    metrics_listen: str = ""
    # The operators served: [[tenants]] tables in the file.
    tenants: tuple[TenantConfig, ...] = field(default_factory=tuple)
    # [[keys]]: hashed keys with a tenant and roles (tenants' own keys are admin).
    keys: tuple[ApiKey, ...] = field(default_factory=tuple)

    def tenant_by_key_hash(self) -> dict[str, TenantConfig]:
        return {h: t for t in self.tenants for h in t.api_key_sha256}

    def api_keys(self) -> tuple[ApiKey, ...]:
        """Every key of the configuration (not the keys file): tenants' keys as admin."""
        return (*(k for t in self.tenants for k in tenant_keys(t.name, t.api_key_sha256)),
                *self.keys)


_SCALARS = {f.name: f for f in fields(Settings) if f.name not in ("tenants", "keys")}


def _coerce(name: str, raw: str, like: Any) -> Any:
    if isinstance(like, bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"PAIRLINE_{name.upper()}: expected a boolean, got {raw!r}")
    if isinstance(like, int):
        return int(raw)
    if isinstance(like, float):
        return float(raw)
    return raw


_TENANT_KEYS = {f.name for f in fields(TenantConfig)} | {"api_keys"}


def _check_type(name: str, value: Any, like: Any) -> None:
    """A file value must be of its setting's kind (an int is fine for a float)."""
    if isinstance(like, bool):
        ok = isinstance(value, bool)
    elif isinstance(like, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif isinstance(like, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(like, str):
        ok = isinstance(value, str)
    else:
        ok = True
    if not ok:
        raise ValueError(
            f"setting {name!r} must be a {type(like).__name__}, not {type(value).__name__} "
            f"({value!r})"
        )


_TENANT_DEFAULTS = {
    f.name: f.default for f in fields(TenantConfig) if not isinstance(f.default, tuple)
}


def _tenant(raw: Mapping[str, Any]) -> TenantConfig:
    data = dict(raw)
    unknown = set(data) - _TENANT_KEYS
    if unknown:
        raise ValueError(
            f"tenant {data.get('name', '?')}: unknown settings {sorted(unknown)}"
        )
    for name, value in data.items():
        if name in _TENANT_DEFAULTS and name != "name":
            _check_type(f"tenants.{name}", value, _TENANT_DEFAULTS[name])
    keys = data.pop("api_key_sha256", ())
    if isinstance(keys, str):
        keys = (keys,)
    # Plain keys are accepted for development only and hashed at once.
    plain = data.pop("api_keys", ())
    if isinstance(plain, str):
        plain = (plain,)
    hashed = tuple(keys) + tuple(hash_api_key(k) for k in plain)
    queue_policies = tuple(sorted(dict(data.pop("queue_policies", {})).items()))
    if "holidays" in data:
        data["holidays"] = tuple(str(h) for h in data["holidays"])
    if "previous_secrets" in data:
        data["previous_secrets"] = tuple(_previous(p) for p in data["previous_secrets"])
    steps = tuple((float(w), int(p)) for w, p in data.pop("relax_steps", ()))
    return TenantConfig(
        api_key_sha256=hashed, queue_policies=queue_policies, relax_steps=steps, **data
    )


def _previous(raw: Any) -> tuple[str, float]:
    import datetime as dt

    if not isinstance(raw, Mapping) or set(raw) != {"secret", "until"}:
        raise ValueError("previous_secrets entries are {secret = \"...\", until = <datetime>}")
    until = raw["until"]
    if isinstance(until, dt.datetime):
        if until.tzinfo is None:
            until = until.replace(tzinfo=dt.UTC)
        until = until.timestamp()
    elif isinstance(until, dt.date):
        until = dt.datetime.combine(until, dt.time(0), dt.UTC).timestamp()
    if not isinstance(until, int | float) or isinstance(until, bool):
        raise ValueError("previous_secrets.until is a TOML datetime or unix seconds")
    return str(raw["secret"]), float(until)


def demo_tenant() -> TenantConfig:
    return TenantConfig(
        name=DEMO_TENANT,
        api_key_sha256=(hash_api_key(DEMO_API_KEY),),
        secret="demo-secret-not-for-production",
    )


def load_settings(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    *,
    demo: bool = False,
    **overrides: Any,
) -> Settings:
    """Build the Settings: defaults < TOML file < PAIRLINE_* env < explicit overrides."""
    env = env or {}
    data: dict[str, Any] = {}
    path = path or env.get("PAIRLINE_CONFIG")
    if path:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    unknown = set(data) - set(_SCALARS) - {"tenants", "keys"}
    if unknown:
        raise ValueError(f"unknown settings in {path}: {sorted(unknown)}")
    for name, value in data.items():
        if name not in ("tenants", "keys"):
            _check_type(name, value, _SCALARS[name].default)
    tenants = tuple(_tenant(t) for t in data.pop("tenants", ()))
    keys = parse_keys(data.pop("keys", []))
    settings = Settings(tenants=tenants, keys=keys, **data)
    for name, f in _SCALARS.items():
        raw = env.get(f"PAIRLINE_{name.upper()}")
        if raw is not None:
            # Coerce by the setting's declared kind (its default's type), not by
            # the type the file happened to use (grace_s = 5 is still a float).
            settings = replace(settings, **{name: _coerce(name, raw, f.default)})
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    if demo and not any(t.name == DEMO_TENANT for t in settings.tenants):
        settings = replace(settings, tenants=(*settings.tenants, demo_tenant()))
    names = [t.name for t in settings.tenants]
    if len(set(names)) != len(names):
        raise ValueError("tenant names must be unique")
    owners = [h for t in settings.tenants for h in set(t.api_key_sha256)]
    if len(set(owners)) != len(owners):
        raise ValueError("an API key belongs to exactly one tenant")
    build_index(settings.api_keys(), names)  # unknown tenants, one key twice
    read_tls(settings.tls_cert_path, settings.tls_key_path, settings.tls_client_ca_path)
    if settings.max_concurrent_rpcs < 1 or settings.keys_reload_s <= 0:
        raise ValueError("max_concurrent_rpcs >= 1 and keys_reload_s > 0")
    if not 0.0 <= settings.decision_log_sample <= 1.0:
        raise ValueError("decision_log_sample must be in 0..1")
    return settings

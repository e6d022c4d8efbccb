"""``pairline``: the command line. ``pairline serve`` runs the server;
``pairline try`` routes one demo contact against a running server."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

from pairline.config import DEMO_API_KEY, load_settings
from pairline.logs import configure


def grpc_experiments(value: str, environ: MutableMapping[str, str],
                     imported: Mapping[str, object]) -> str:
    """Put ``value`` (Settings.grpc_experiments) in GRPC_EXPERIMENTS for the
    server's gRPC core, which reads it once, when grpc is first imported; an
    operator's own GRPC_EXPERIMENTS wins. Returns a warning when it came too late."""
    if not value or "GRPC_EXPERIMENTS" in environ:
        return ""
    if "grpc" in imported:
        return "grpc is already imported: grpc_experiments not applied"
    environ["GRPC_EXPERIMENTS"] = value
    return ""


def _serve(ns: argparse.Namespace) -> int:
    settings = load_settings(
        ns.config, os.environ, demo=ns.demo, listen=ns.listen, redis_url=ns.redis_url,
        metrics_listen=ns.metrics_listen,
    )
    configure(settings.log_level, settings.log_json)
    if not settings.tenants:
        print("no tenants configured: give --config FILE or --demo", file=sys.stderr)
        return 2

    def started(server: object) -> None:
        address = server.address  # type: ignore[attr-defined]
        if ns.demo:
            print(
                f"\npairline is serving on {address} "
                f"({'Redis' if settings.redis_url else 'embedded'} store)\n"
                f"demo tenant API key: {DEMO_API_KEY}\n\n"
                "Route a contact (from another terminal, in this checkout):\n"
                f"  .venv/bin/pairline try --target {address} --key {DEMO_API_KEY}\n\n"
                "or with grpcurl (reflection is on):\n"
                f"  grpcurl -plaintext -H 'authorization: Bearer {DEMO_API_KEY}' "
                "-d '{\"contact_id\":\"c1\",\"queue\":\"sales\",\"channel\":\"CHANNEL_VOICE\"}' "
                f"{address} pairline.v1.Router/RouteContact\n\n"
                "Stop with Ctrl-C.\n",
                flush=True,
            )
        else:
            print(f"pairline is serving on {address}", flush=True)
        endpoint = server.metrics_endpoint  # type: ignore[attr-defined]
        if endpoint is not None:
            print(f"metrics: http://{endpoint.address}/metrics", flush=True)

    warning = grpc_experiments(settings.grpc_experiments, os.environ, sys.modules)
    if warning:
        print(f"pairline: {warning}", file=sys.stderr)
    from pairline.server import serve

    try:
        asyncio.run(serve(settings, on_started=started))
    except OSError as exc:
        print(f"pairline: {exc}", file=sys.stderr)
        return 1
    return 0


def _try(ns: argparse.Namespace) -> int:
    """Log in an agent, route a contact, print both answers as JSON."""
    import grpc
    from google.protobuf import json_format

    from pairline._proto.pairline.v1 import common_pb2 as cpb
    from pairline._proto.pairline.v1 import router_pb2 as rpb
    from pairline._proto.pairline.v1 import router_pb2_grpc as rpb_grpc

    meta = (("authorization", f"Bearer {ns.key}"),)
    with grpc.insecure_channel(ns.target) as channel:
        router = rpb_grpc.RouterStub(channel)
        try:
            state = router.SetAgentState(
                rpb.SetAgentStateRequest(
                    agent_id="agent-1",
                    status=rpb.AGENT_STATUS_AVAILABLE,
                    queues=[rpb.QueueMembership(queue="sales", proficiency=80)],
                ),
                metadata=meta,
                timeout=5,
            )
            decision = router.RouteContact(
                rpb.RouteContactRequest(
                    contact_id=ns.contact_id,
                    queue="sales",
                    channel=cpb.CHANNEL_VOICE,
                    customer_key="+15550100",
                ),
                metadata=meta,
                timeout=5,
            )
        except grpc.RpcError as err:
            print(f"{err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    out = {
        "agent": json_format.MessageToDict(state),
        "decision": json_format.MessageToDict(decision),
    }
    print(json.dumps(out, indent=2))
    return 0


def _health(ns: argparse.Namespace) -> int:
    """gRPC health check (``grpc.health.v1``): exit 0 when SERVING, 1 otherwise.
    No API key needed; used by the container's HEALTHCHECK."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(ns.target) as channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=ns.service), timeout=ns.timeout
            )
        except grpc.RpcError as err:
            print(f"{err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    print(status)
    return 0 if resp.status == health_pb2.HealthCheckResponse.SERVING else 1


def _insights_call(ns: argparse.Namespace, call: Any) -> Any:
    """``call(InsightsStub, metadata)`` against ``ns.target`` with ``ns.key``; on a
    gRPC error print ``CODE: details`` and return None."""
    import grpc

    from pairline._proto.pairline.v1 import insights_pb2_grpc as ipb_grpc

    with grpc.insecure_channel(ns.target) as channel:
        try:
            return call(ipb_grpc.InsightsStub(channel), (("authorization", f"Bearer {ns.key}"),))
        except grpc.RpcError as err:
            print(f"{err.code().name}: {err.details()}", file=sys.stderr)
            return None


def _report(ns: argparse.Namespace) -> int:
    """Fetch the ON/OFF benchmark report from a running server; print and plot it."""
    from google.protobuf import json_format

    from pairline._proto.pairline.v1 import insights_pb2 as ipb

    rep = _insights_call(ns, lambda stub, meta: stub.GetBenchmarkReport(
        ipb.GetBenchmarkReportRequest(outcome=ns.outcome, queue=ns.queue or ""),
        metadata=meta, timeout=30,
    ))
    if rep is None:
        return 1
    if ns.json:
        print(json.dumps(json_format.MessageToDict(rep, always_print_fields_with_no_presence=True),
                         indent=2))
    else:
        print(format_report(rep))
    if ns.plot:
        plot_report(rep, ns.plot)
        print(f"plot written to {ns.plot}", file=sys.stderr)
    return 0


def _export(ns: argparse.Namespace) -> int:
    """Write the server's decision history as `pairline train`'s CSV."""
    import csv

    from pairline._proto.pairline.v1 import common_pb2 as cpb
    from pairline._proto.pairline.v1 import insights_pb2 as ipb

    rows = _insights_call(ns, lambda stub, meta: list(stub.ExportHistory(
        ipb.ExportHistoryRequest(outcome=ns.outcome, since_ms=ns.since_ms),
        metadata=meta, timeout=600,
    )))
    if rows is None:
        return 1
    dc = max((len(r.customer) for r in rows), default=0)
    da = max((len(r.agent) for r in rows), default=0)
    features = sorted({name for r in rows for name in r.context})
    with open(ns.out, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["decision_id", "queue", "mode", "decided_at_ms", "outcome",
                      *(f"c_{i}" for i in range(dc)), *(f"a_{i}" for i in range(da)),
                      *(f"ctx_{f}" for f in features)])
        for r in rows:
            out.writerow([
                r.decision_id, r.queue, cpb.Mode.Name(r.mode).removeprefix("MODE_"),
                r.decided_at_ms, repr(r.outcome),
                *(list(map(repr, r.customer)) or [""] * dc),
                *(list(map(repr, r.agent)) or [""] * da),
                *(repr(r.context[f]) if f in r.context else "" for f in features),
            ])
    print(f"{len(rows)} decisions written to {ns.out}", file=sys.stderr)
    return 0


def _num(v: float, spec: str) -> str:
    """``v`` formatted, or "-" for NaN (no value)."""
    return "-" if math.isnan(v) else format(v, spec)


def format_report(rep: object) -> str:
    """The benchmark report as a readable table: every stratum (``used`` no: left
    out of the estimate), the combined means with the decisions and slot runs used
    and those excluded, the absolute and relative gain with their intervals, or
    why they are not estimable."""
    r: Any = rep
    lines = [
        f"outcome: {r.outcome}",
        f"{'queue':<16}{'period':>7}{'ON n':>8}{'slots':>7}{'ON mean':>10}"
        f"{'OFF n':>8}{'slots':>7}{'OFF mean':>10}{'used':>6}",
    ]
    for s in r.strata:
        lines.append(
            f"{s.queue:<16}{s.period:>7}{s.on_count:>8}{s.on_slots:>7}"
            f"{_num(s.on_mean, '.4f'):>10}{s.off_count:>8}{s.off_slots:>7}"
            f"{_num(s.off_mean, '.4f'):>10}{'yes' if s.included else 'no':>6}"
        )
    used = sum(1 for s in r.strata if s.included)
    lines += [
        "",
        f"combined ({used} of {len(r.strata)} strata, stratum-weighted): "
        f"ON {_num(r.on_mean, '.4f')} (n={r.on_count}, {r.on_slots} slot runs)  "
        f"OFF {_num(r.off_mean, '.4f')} (n={r.off_count}, {r.off_slots} slot runs)",
    ]
    if used < len(r.strata):
        lines.append(
            f"excluded (fewer than two slot runs on a side): ON n={r.excluded_on_count}  "
            f"OFF n={r.excluded_off_count}  in "
            + ", ".join(f"{s.queue} {s.period}" for s in r.strata if not s.included)
        )
    if not r.estimable and not r.reason:  # a server from before `estimable`
        lines.append(
            f"relative gain {r.relative_gain:+.2%}   95% CI [{r.ci_low:+.2%}, {r.ci_high:+.2%}]"
            "   (older server: decisions taken as independent)"
        )
    elif r.estimable:
        lines.append(
            f"absolute gain (ON - OFF) {r.absolute_gain:+.4f}   "
            f"95% CI [{r.absolute_ci_low:+.4f}, {r.absolute_ci_high:+.4f}]"
        )
    elif math.isnan(r.absolute_gain):
        lines.append(f"gain not estimable: {r.reason}")
    else:  # a point estimate without an interval
        lines.append(f"absolute gain (ON - OFF) {r.absolute_gain:+.4f}   not estimable: {r.reason}")
    if r.relative_estimable:
        lines.append(
            f"relative gain {r.relative_gain:+.2%}   95% CI [{r.ci_low:+.2%}, {r.ci_high:+.2%}]"
        )
    elif r.estimable:
        lines.append(f"relative gain not estimable: {r.relative_reason}")
    elif r.reason and not math.isnan(r.relative_gain):
        lines.append(f"relative gain {r.relative_gain:+.2%}   no interval")
    lines.append(
        f"utilisation spread (max-min)/mean: ON {r.on_utilisation_spread:.3f}  "
        f"OFF {r.off_utilisation_spread:.3f}"
    )
    return "\n".join(lines)


def _or0(v: float) -> float:
    return 0.0 if math.isnan(v) else v


def plot_report(rep: object, path: str) -> None:
    """Per-stratum ON/OFF means and the combined gain with its interval, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r: Any = rep
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 1]})
    labels = [f"{s.queue}\n{s.period}{'' if s.included else '*'}" for s in r.strata]
    xs = range(len(labels))
    ax1.bar([x - 0.2 for x in xs], [_or0(s.on_mean) for s in r.strata], 0.4, label="pairing ON")
    off_means = [_or0(s.off_mean) for s in r.strata]
    ax1.bar([x + 0.2 for x in xs], off_means, 0.4, label="OFF (control)")
    ax1.set_xticks(list(xs), labels, fontsize=8)
    ax1.set_ylabel(f"mean {r.outcome}")
    ax1.legend()
    ax1.set_title("per stratum (queue x hour; * = left out of the estimate)")
    if r.relative_estimable:
        gain, low, high = r.relative_gain * 100, r.ci_low * 100, r.ci_high * 100
        ax2.set_ylabel("relative gain, % (95% CI)")
        ax2.set_title("combined")
    elif r.estimable:  # the relative gain is not estimable: show the absolute one
        gain, low, high = r.absolute_gain, r.absolute_ci_low, r.absolute_ci_high
        ax2.set_ylabel(f"absolute gain ON - OFF, {r.outcome} (95% CI)")
        ax2.set_title("combined (relative: not estimable)")
    else:
        ax2.text(0.5, 0.5, "not estimable", ha="center", va="center", transform=ax2.transAxes)
        ax2.set_yticks([])
        ax2.set_title("combined")
    if r.estimable:
        ax2.errorbar([0], [gain], yerr=[[gain - low], [high - gain]], fmt="o", capsize=8)
        ax2.axhline(0, color="grey", lw=0.8)
    ax2.set_xticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _add_health(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="127.0.0.1:50051")
    p.add_argument("--service", default="", help="a service name (default: the server)")
    p.add_argument("--timeout", type=float, default=2.0, metavar="SECONDS")
    p.set_defaults(run=_health)


def _add_serve(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--listen", help="HOST:PORT (default 127.0.0.1:50051)")
    serve.add_argument("--config", help="TOML settings file (or PAIRLINE_CONFIG)")
    serve.add_argument("--demo", action="store_true", help="add the demo tenant")
    serve.add_argument("--metrics-listen", metavar="HOST:PORT",
                       help="serve Prometheus /metrics over HTTP here (default: off)")
    serve.add_argument(
        "--redis-url",
        help="share state with other replicas through Redis: redis://HOST:PORT/DB, "
        "rediss://..., unix:///path, or redis+cluster://HOST:PORT[,HOST:PORT...] "
        "(or PAIRLINE_REDIS_URL); default: the embedded store",
    )
    serve.set_defaults(run=_serve)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["health"]:  # before the heavy imports below: a probe runs it often
        health = argparse.ArgumentParser(prog="pairline health", description=_health.__doc__)
        _add_health(health)
        ns = health.parse_args(args[1:])
        return int(ns.run(ns))
    if args[:1] == ["serve"]:  # before anything imports grpc (see grpc_experiments)
        serve = argparse.ArgumentParser(prog="pairline serve", description="run the gRPC server")
        _add_serve(serve)
        ns = serve.parse_args(args[1:])
        return int(ns.run(ns))
    if args[:1] == ["simulate"]:  # its own parser: every option passes through
        from pairline.sim.__main__ import main as simulate_main

        return simulate_main(args[1:])
    if args[:1] == ["demo"]:
        from pairline.demo import main as demo_main

        return demo_main(args[1:])
    parser = argparse.ArgumentParser(prog="pairline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub.add_parser("serve", help="run the gRPC server"))
    try_ = sub.add_parser("try", help="route one demo contact against a running server")
    try_.add_argument("--target", default="127.0.0.1:50051")
    try_.add_argument("--key", default=DEMO_API_KEY)
    try_.add_argument("--contact-id", default="demo-contact-1")
    try_.set_defaults(run=_try)
    _add_health(sub.add_parser("health", help="gRPC health check: exit 0 when SERVING"))
    report = sub.add_parser("report", help="print (and plot) the ON/OFF benchmark report")
    report.add_argument("--target", default="127.0.0.1:50051")
    report.add_argument("--key", default=DEMO_API_KEY)
    report.add_argument("--outcome", default="converted")
    report.add_argument("--queue", default="")
    report.add_argument("--json", action="store_true")
    report.add_argument("--plot", metavar="FILE.png")
    report.set_defaults(run=_report)
    export = sub.add_parser("export", help="write the decision history as training CSV")
    export.add_argument("--target", default="127.0.0.1:50051")
    export.add_argument("--key", default=DEMO_API_KEY)
    export.add_argument("--outcome", default="converted")
    export.add_argument("--since-ms", type=int, default=0)
    export.add_argument("--out", required=True, metavar="HISTORY.csv")
    export.set_defaults(run=_export)
    sub.add_parser("simulate", help="contact-center simulator: policies side by side "
                   "(pairline simulate --help)")
    sub.add_parser("demo", help="history -> model -> server -> ON/OFF report, end to end "
                   "(pairline demo --help)")
    from pairline.loadtest import add_loadtest_parser
    from pairline.train import add_train_parser

    add_train_parser(sub)
    add_loadtest_parser(sub)
    ns = parser.parse_args(args)
    return int(ns.run(ns))


if __name__ == "__main__":
    raise SystemExit(main())

"""``pairline``: the command line. ``pairline serve`` runs the server;
``pairline try`` routes one demo contact against a running server."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence

from pairline.config import DEMO_API_KEY, load_settings
from pairline.logs import configure


def _serve(ns: argparse.Namespace) -> int:
    settings = load_settings(ns.config, os.environ, demo=ns.demo, listen=ns.listen)
    configure(settings.log_level, settings.log_json)
    if not settings.tenants:
        print("no tenants configured: give --config FILE or --demo", file=sys.stderr)
        return 2

    def started(server: object) -> None:
        address = server.address  # type: ignore[attr-defined]
        if ns.demo:
            print(
                f"\npairline is serving on {address} (embedded store)\n"
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

    from pairline.server import serve

    asyncio.run(serve(settings, on_started=started))
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pairline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gRPC server")
    serve.add_argument("--listen", help="HOST:PORT (default 127.0.0.1:50051)")
    serve.add_argument("--config", help="TOML settings file (or PAIRLINE_CONFIG)")
    serve.add_argument("--demo", action="store_true", help="add the demo tenant")
    serve.set_defaults(run=_serve)
    try_ = sub.add_parser("try", help="route one demo contact against a running server")
    try_.add_argument("--target", default="127.0.0.1:50051")
    try_.add_argument("--key", default=DEMO_API_KEY)
    try_.add_argument("--contact-id", default="demo-contact-1")
    try_.set_defaults(run=_try)
    ns = parser.parse_args(argv)
    return int(ns.run(ns))


if __name__ == "__main__":
    raise SystemExit(main())

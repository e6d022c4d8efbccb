"""``python -m pairline.sim``: run the default scenario (or a variant) and print the
table, or the JSON result with ``--json``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from pairline.sim.run import DEFAULT_POLICIES, SwitchFactory, render_table, simulate
from pairline.sim.scenario import PolicySpec, default_scenario
from pairline.sim.switch import Switch, SwitchSetup


def _policy(text: str) -> PolicySpec:
    """``name`` or ``name:knob=value,knob=value`` (knobs: skew, wait_weight, window, batch)."""
    name, _, knobs = text.partition(":")
    kw: dict[str, float | int | bool] = {}
    for item in filter(None, knobs.split(",")):
        key, _, value = item.partition("=")
        if key == "window":
            kw[key] = int(value)
        elif key == "batch":
            kw[key] = value.lower() in ("1", "true", "yes", "on")
        elif key in ("skew", "wait_weight"):
            kw[key] = float(value)
        else:
            raise argparse.ArgumentTypeError(f"unknown policy knob {key!r}")
    return PolicySpec(name, **kw)  # type: ignore[arg-type]


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pairline.sim", description=__doc__)
    p.add_argument("--hours", type=float, default=48.0, help="arrival horizon (default 48)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--policy", dest="policies", action="append", type=_policy,
                   help="a policy to run, e.g. diagonal:skew=1 (repeatable; default: "
                        + ", ".join(DEFAULT_POLICIES) + ")")
    p.add_argument("--strength", type=float, help="interaction strength (logit sd)")
    p.add_argument("--no-oracle", action="store_true")
    p.add_argument("--target", help="drive a running server at HOST:PORT over gRPC (its "
                   "tenant's policy decides; give one --policy to name the row)")
    p.add_argument("--key", default="", help="the tenant's API key (with --target)")
    p.add_argument("--speed", type=float, default=60.0,
                   help="with --target: simulated seconds per real second (default 60)")
    p.add_argument("--json", action="store_true", help="print the JSON result")
    p.add_argument("--plot", metavar="FILE.png", help="also draw the result as a PNG")
    ns = p.parse_args(argv)
    from pairline.logs import configure

    configure("warning")
    scenario = default_scenario(horizon_s=ns.hours * 3600)
    if ns.strength is not None:
        scenario = scenario.with_truth(interaction_strength=ns.strength)
    switch: str | SwitchFactory = "service"
    policies = ns.policies or DEFAULT_POLICIES
    if ns.target:
        from pairline.sim.remote import GrpcSwitch

        def remote(policy: PolicySpec, setup: SwitchSetup, seed: int) -> Switch:
            return GrpcSwitch(setup, ns.key, target=ns.target, speed=ns.speed)

        switch = remote
        policies = ns.policies or [PolicySpec("baseline", label="server")]
        if len(policies) != 1:
            p.error("with --target give at most one --policy (the server's, to name the row)")
    from rich.progress import Progress

    steps = len(policies) + 1 + (not ns.no_oracle)
    with Progress(console=_stderr_console(), transient=True,
                  disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("simulating", total=steps)

        started: list[str] = []

        def progress(name: str) -> None:  # a step starts: the one before it is done
            bar.update(task, description=name, advance=1 if started else 0)
            started.append(name)

        result = simulate(scenario, policies, ns.seed, switch=switch, oracle=not ns.no_oracle,
                          progress=progress)
    if ns.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        print(render_table(result))
    if ns.plot:
        from pairline.sim.plot import plot_result

        plot_result(result, ns.plot)
        print(f"plot written to {ns.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The docs say what the code does: the generated configuration reference is
fresh, every metric and RPC is documented, links resolve."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from pairline._proto.pairline.v1 import router_pb2
from pairline.client import IDEMPOTENT
from pairline.metrics import LIVE, PENDING

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def read(name: str) -> str:
    return (DOCS / name).read_text()


class TestConfigurationReference:
    def test_committed_reference_is_fresh(self) -> None:
        """docs/configuration.md is what scripts/gen_config_doc.py makes of config.py
        now (run `make docs` after changing a setting)."""
        done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_config_doc.py"),
                               "--check"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr

    def test_every_setting_has_a_meaning(self) -> None:
        """Each setting has a comment in config.py, so the reference explains it."""
        assert "(undocumented)" not in read("configuration.md")


class TestOperations:
    def test_every_metric_is_documented_as_live_or_pending(self) -> None:
        """Live metrics are in the live table, pending ones in the hooks table."""
        text = read("operations.md")
        live, _, pending = text.partition("Registered now, fed by work in progress")
        assert pending or not PENDING, "the pending-metrics table is missing"
        for name in LIVE:
            assert f"`{name}`" in live.split("## Logs")[0], name
        for name in PENDING:
            assert f"`{name}`" in pending.split("## Logs")[0], name
            assert f"`{name}`" not in live, name


class TestIntegration:
    def test_every_router_rpc_is_covered(self) -> None:
        """The switch guide names every Router method."""
        text = read("integration.md")
        for method in router_pb2.DESCRIPTOR.services_by_name["Router"].methods:
            assert method.name in text, method.name

    def test_retried_calls_match_the_client(self) -> None:
        """The guide lists the calls the Python client retries."""
        text = read("integration.md")
        clients = text.split("## Clients")[1]
        for _, method in IDEMPOTENT:
            assert f"`{method}`" in clients, method


class TestLinks:
    def test_relative_links_resolve(self) -> None:
        """Every relative link in README.md and docs/ points at a file that exists."""
        for page in [ROOT / "README.md", *DOCS.glob("*.md")]:
            for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
                assert (page.parent / target).exists(), f"{page.name}: {target}"

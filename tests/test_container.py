"""The container files, checked without a Docker engine: what compose.yaml and the
Dockerfile ask of pairline must be what pairline offers.

(The image itself is built where an engine is available; `pairline health`, the
HEALTHCHECK's command, is tested against a real server in test_cli.py.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pairline.config import DEMO_API_KEY, hash_api_key, load_settings

ROOT = Path(__file__).resolve().parent.parent
# Flags the compose file may use before their feature lands (none now).
PENDING_FLAGS: dict[str, str] = {}


def serve_flags() -> set[str]:
    out = subprocess.run([sys.executable, "-m", "pairline.cli", "serve", "--help"],
                         capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"--[a-z][a-z-]+", out))


@pytest.fixture(scope="module")
def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "compose.yaml").read_text())  # type: ignore[no-any-return]


def pairline_services(compose: dict) -> dict:  # type: ignore[type-arg]
    return {n: s for n, s in compose["services"].items() if n.startswith("pairline")}


class TestCompose:
    def test_replicas_and_redis(self, compose: dict) -> None:  # type: ignore[type-arg]
        """Two or more replicas of one image, each waiting for a healthy Redis, with
        their own host ports."""
        replicas = pairline_services(compose)
        assert len(replicas) >= 2
        assert "healthcheck" in compose["services"]["redis"]
        assert {s["image"] for s in replicas.values()} == {"pairline:local"}
        for s in replicas.values():
            assert s["depends_on"]["redis"]["condition"] == "service_healthy"
        published = [p.split(":")[0] for s in replicas.values() for p in s["ports"]]
        assert len(published) == len(set(published))

    def test_commands_use_flags_pairline_serve_has(self, compose: dict) -> None:  # type: ignore[type-arg]
        """Every flag the replicas are started with exists (or is a known pending one)."""
        known = serve_flags()
        assert {"--metrics-listen", "--redis-url"} <= known
        for s in pairline_services(compose).values():
            for flag in (a for a in s["command"] if a.startswith("--")):
                assert flag in known or flag in PENDING_FLAGS, flag
            url = s["command"][s["command"].index("--redis-url") + 1]
            assert url == "redis://redis:6379/0"

    def test_mounted_config_loads_and_knows_the_demo_key(self, compose: dict) -> None:  # type: ignore[type-arg]
        """deploy/pairline.toml is a valid configuration whose tenant takes the key
        the docs use."""
        for s in pairline_services(compose).values():
            src, dst, _ = s["volumes"][0].split(":")
            assert (ROOT / src).resolve() == ROOT / "deploy" / "pairline.toml"
            assert dst == "/etc/pairline/pairline.toml"
        cfg = load_settings(ROOT / "deploy" / "pairline.toml", {})
        assert hash_api_key(DEMO_API_KEY) in cfg.tenant_by_key_hash()


class TestDockerfile:
    text = (ROOT / "Dockerfile").read_text()

    def test_shape(self) -> None:
        """Multi-stage, slim, non-root, health through `pairline health` on the
        port the image listens on."""
        froms = re.findall(r"^FROM (\S+)", self.text, re.M)
        assert len(froms) >= 2 and all("slim" in f for f in froms)
        user = re.findall(r"^USER (\S+)", self.text, re.M)
        assert user and user[-1] not in ("root", "0")
        listen = re.search(r"PAIRLINE_LISTEN=\S+:(\d+)", self.text)
        health = re.search(r'HEALTHCHECK .*\n?.*CMD \["pairline", "health", "--target", '
                           r'"127\.0\.0\.1:(\d+)"', self.text)
        assert listen and health and listen.group(1) == health.group(1)
        assert 'ENTRYPOINT ["pairline", "serve"]' in self.text

    def test_numba_cache_step_fills_the_cache(self, tmp_path: Path) -> None:
        """The build step that prepares the Numba cache writes it where NUMBA_CACHE_DIR
        says (the same command, run here)."""
        step = re.search(r'RUN python -c "(from pairline import kernels; kernels.warm\(\))"',
                         self.text)
        assert step
        env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
        subprocess.run([sys.executable, "-c", step.group(1)], env=env, check=True, timeout=600)
        cached = {p.suffix for p in tmp_path.rglob("*")}
        assert {".nbi", ".nbc"} <= cached

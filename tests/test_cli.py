"""The command line's failure paths a new user meets first."""

from __future__ import annotations

import socket
import subprocess
import sys

from pairline.cli import grpc_experiments


class TestServe:
    def test_busy_port_is_a_clean_error(self) -> None:
        """`pairline serve` on a port already in use exits 1 with a one-line reason."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
            port = s.getsockname()[1]
            done = subprocess.run(
                [sys.executable, "-m", "pairline.cli", "serve", "--demo", "--listen",
                 f"127.0.0.1:{port}"],
                capture_output=True, text=True, timeout=60,
            )
        assert done.returncode == 1
        assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
        assert "Traceback" not in done.stderr


class TestHealth:
    async def test_health_of_a_real_server(self) -> None:
        """`pairline health` prints SERVING and exits 0 against a running server, per
        service too; an unknown service and a closed port exit 1."""
        import asyncio

        from support import free_port, running

        async def health(*args: str) -> subprocess.CompletedProcess[str]:
            return await asyncio.to_thread(
                subprocess.run, [sys.executable, "-m", "pairline.cli", "health", *args],
                capture_output=True, text=True, timeout=60)

        async with running() as r:
            ok = await health("--target", r.server.address)
            router = await health("--target", r.server.address, "--service",
                                  "pairline.v1.Router")
            unknown = await health("--target", r.server.address, "--service", "nope")
        assert (ok.returncode, ok.stdout.strip()) == (0, "SERVING")
        assert (router.returncode, router.stdout.strip()) == (0, "SERVING")
        assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr
        down = await health("--target", f"127.0.0.1:{free_port()}", "--timeout", "1")
        assert down.returncode == 1 and "UNAVAILABLE" in down.stderr


class TestGrpcExperiments:
    def test_set_before_grpc_is_imported(self) -> None:
        """grpc_experiments goes into GRPC_EXPERIMENTS while grpc is not yet imported."""
        env: dict[str, str] = {}
        assert grpc_experiments("-event_engine_listener", env, {}) == ""
        assert env == {"GRPC_EXPERIMENTS": "-event_engine_listener"}

    def test_operator_environment_wins(self) -> None:
        """An operator's GRPC_EXPERIMENTS (even empty) is left as it is."""
        env = {"GRPC_EXPERIMENTS": ""}
        assert grpc_experiments("-event_engine_listener", env, {}) == ""
        assert env == {"GRPC_EXPERIMENTS": ""}

    def test_too_late_is_said(self) -> None:
        """Once grpc is imported the setting cannot apply: a warning, env untouched."""
        env: dict[str, str] = {}
        assert "already imported" in grpc_experiments("-x", env, {"grpc": object()})
        assert env == {}

    def test_serve_reaches_its_settings_before_grpc_is_imported(self) -> None:
        """`pairline serve` gets to apply the setting: grpc is not imported by then."""
        code = ("import sys, pairline.cli as c; "
                "c._serve = lambda ns: print('grpc' in sys.modules) or 0; "
                "sys.exit(c.main(['serve', '--demo']))")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=60)
        assert (done.returncode, done.stdout.strip()) == (0, "False")

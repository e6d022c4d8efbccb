"""The command line's failure paths a new user meets first."""

from __future__ import annotations

import socket
import subprocess
import sys


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

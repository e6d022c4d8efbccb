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

"""``python -m pairline.demo`` end to end: a shortened demo against a real server
process (simulated history, training, ``pairline serve``, profiles and model over
gRPC, paced traffic with ON/OFF slots, the benchmark report, SIGTERM)."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pairline.model import load_model

pytestmark = pytest.mark.slow

# A small center (8 agents, ~80 calls/h), 4 simulated hours of traffic in about
# 12 s at 1200x, ON/OFF slots of 0.5 s: some 24 slots, so both sides occur.
SHORT = ["--seed", "3", "--agents", "8", "--customers", "1000", "--history-hours", "96",
         "--hours", "4", "--minutes", "0.2", "--slot-s", "0.5", "--stabilise-s", "0.05"]


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PAIRLINE_")}


def gone(pid: int) -> bool:
    """No process ``pid``, or one that is not a pairline server (the pid was reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    return b"pairline" not in cmdline


def test_short_demo_end_to_end(tmp_path: Path) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pairline.demo", *SHORT, "--json", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=150, env=env(), check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    narration = done.stderr

    # (1) the history file is pairline train's CSV, with the service's profile vectors
    with (tmp_path / "history.csv").open() as fh:
        header = next(csv.reader(fh))
    assert header == ["outcome", "mode", "c_0", "c_1", "c_2", "c_3", "a_0", "a_1", "a_2", "a_3",
                      "decided_at_ms"]
    assert summary["history"]["modes"] == {"BASELINE": summary["history"]["rows"]}

    # (2) the model trained, and on held-out log loss it beats (or matches) the
    # model without interaction
    training = summary["training"]
    held = training["heldout"]
    assert held["interaction"]["log_loss"] <= held["no_interaction"]["log_loss"]
    assert training["beats_no_interaction"] is True
    model = load_model((tmp_path / "model.npz").read_bytes(), customer_dim=4, agent_dim=4)
    assert model.version == training["version"]
    assert "held out" in narration and "no interaction" in narration

    # (3, 4) a real server on loopback, profiles and model loaded through the RPCs
    server = summary["server"]
    assert re.fullmatch(r"127\.0\.0\.1:\d+", server["address"])
    assert 'listen = "127.0.0.1:0"' in (tmp_path / "pairline.toml").read_text()
    profiles = summary["profiles"]
    assert profiles["customers_accepted"] == 1000 and profiles["agents_accepted"] == 8
    assert profiles["model_version"] == training["version"] and profiles["model_active"]

    # (5) the server answered PAIRED (ON slots) and CONTROL (OFF slots) decisions,
    # and only those: every customer has a profile and the model is active
    traffic = summary["traffic"]
    modes = traffic["decisions_by_mode"]
    assert modes.get("PAIRED", 0) > 0 and modes.get("CONTROL", 0) > 0
    assert set(modes) == {"PAIRED", "CONTROL"}
    assert traffic["handled"] > 100 and not traffic["cut_short"]
    assert traffic["handled"] + traffic["abandoned"] == traffic["contacts"]

    # (6) the report compares ON and OFF, on the decisions the switch saw
    report = summary["report"]
    assert report["outcome"] == "success"
    assert report["on_count"] > 0 and report["off_count"] > 0
    assert report["on_count"] + report["off_count"] <= traffic["handled"]
    assert report["ci_low"] <= report["relative_gain"] <= report["ci_high"]
    truth = summary["truth"]
    assert truth["on_count"] > 0 and truth["off_count"] > 0
    assert abs(truth["on_count"] - report["on_count"]) <= max(3, report["on_count"] // 50)
    assert abs(truth["off_count"] - report["off_count"]) <= max(3, report["off_count"] // 50)
    assert truth["expected_gain"] is not None
    assert truth["in_process"]["expected_gain"] is not None
    assert "relative gain" in narration and "95% CI" in narration  # format_report's table

    # the server was stopped with SIGTERM and exited 0
    assert server["exit_code"] == 0 and server["stopped"]
    assert gone(server["pid"])
    assert all(summary["checks"].values()), summary["checks"]
    assert summary["ok"] is True
    assert time.monotonic() - started < 120


def test_sigterm_stops_the_demo_and_its_server(tmp_path: Path) -> None:
    """Interrupted during the traffic, the demo stops its server before exiting."""
    log = tmp_path / "narration.txt"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pairline.demo", "--agents", "4", "--customers", "200",
             "--history-hours", "24", "--hours", "24", "--minutes", "5",
             "--workdir", str(tmp_path / "work")],
            stdout=out, stderr=subprocess.STDOUT, text=True, env=env())
    try:
        deadline = time.monotonic() + 60
        pid = None
        while time.monotonic() < deadline and proc.poll() is None:
            text = log.read_text()
            found = re.search(r"serving on \S+ \(pid (\d+)", text)
            if found and "[5/6]" in text:
                pid = int(found.group(1))
                break
            time.sleep(0.1)
        assert pid is not None, log.read_text()
        time.sleep(1.0)
        assert not gone(pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 130, log.read_text()
        assert gone(pid)
        assert "interrupted" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

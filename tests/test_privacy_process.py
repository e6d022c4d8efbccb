"""The privacy promises of a real ``pairline serve`` process: an acknowledged
opt-out or deletion survives SIGKILL (the ledger file is fsynced before the
answer), and traffic full of phone numbers leaves none of them in the logs or
in any file the server wrote."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import grpc
from support import Client, contact, login
from test_server_lifecycle import clean_env, serving

from pairline._proto.pairline.v1 import common_pb2 as cpb
from pairline._proto.pairline.v1 import privacy_pb2 as xpb
from pairline._proto.pairline.v1 import profiles_pb2 as ppb
from pairline._proto.pairline.v1 import router_pb2 as rpb

KEY = "proc-key-0123456789"
PHONES = [f"+1555010{i:04d}" for i in range(20)]


def write_config(path: Path, data_dir: Path, *, log_level: str = "info") -> None:
    path.write_text("\n".join([
        'listen = "127.0.0.1:0"',
        f'data_dir = "{data_dir}"',
        f'log_level = "{log_level}"',
        "deletion_interval_s = 0.05",
        "",
        "[[tenants]]",
        'name = "proc"',
        f'api_keys = ["{KEY}"]',
        'secret = "proc-secret-0123456789"',
        "customer_dim = 4",
        "agent_dim = 3",
        'policy = "greedy"',
        "",
    ]))


def sigkill(proc: asyncio.subprocess.Process) -> None:
    os.kill(proc.pid, signal.SIGKILL)


class TestSigkill:
    async def test_acknowledged_records_survive_sigkill(self, tmp_path: Path) -> None:
        """Opt-out, bulk opt-out and deletion acknowledged just before a SIGKILL are
        all there after a restart: routing says OPTED_OUT, the ticket is found, the
        audit holds them."""
        cfg, data = tmp_path / "pairline.toml", tmp_path / "data"
        write_config(cfg, data)
        env = clean_env()
        async with serving(tmp_path, "--config", str(cfg), env=env) as p:
            async with grpc.aio.insecure_channel(p.address) as ch:
                c = Client(ch, KEY)
                await c.privacy.OptOut(xpb.OptOutRequest(customer_key=PHONES[0]))
                await c.privacy.BulkOptOut(iter([xpb.BulkOptOutRequest(
                    customer_keys=PHONES[1:3])]))
                ticket = await c.privacy.RequestDeletion(
                    xpb.RequestDeletionRequest(customer_key=PHONES[5]))
                sigkill(p.proc)  # right after the last acknowledgement
            assert await p.proc.wait() == -signal.SIGKILL

        async with serving(tmp_path, "--config", str(cfg), env=env) as p:
            async with grpc.aio.insecure_channel(p.address) as ch:
                c = Client(ch, KEY)
                got = await c.privacy.GetDeletion(xpb.GetDeletionRequest(
                    ticket_id=ticket.ticket_id))
                assert got.customer_digest == ticket.customer_digest
                assert got.received_at_ms == ticket.received_at_ms
                for i, key in enumerate(PHONES[:3]):
                    await c.router.SetAgentState(login("a1", "sales"))
                    d = await c.router.RouteContact(contact(f"c{i}", customer_key=key))
                    assert d.mode == cpb.MODE_OPTED_OUT, key
                    await c.router.ReleaseDecision(rpb.ReleaseDecisionRequest(
                        decision_id=d.decision_id))
                    await c.router.EndContact(rpb.EndContactRequest(
                        contact_id=f"c{i}", reason=rpb.END_REASON_ABANDONED))
                entries = (await c.privacy.ReadAudit(xpb.ReadAuditRequest())).entries
                ops = [e.op for e in entries]
                assert ops[:4] == ["opt_out", "opt_out", "opt_out", "deletion_received"]
            assert await p.terminate() == 0


class TestNoRawKeys:
    async def test_phone_numbers_never_written(self, tmp_path: Path) -> None:
        """Known phone numbers sent down every key-taking path of a real server
        (debug logs on) appear neither in its output nor in any file it wrote."""
        cfg, data = tmp_path / "pairline.toml", tmp_path / "data"
        write_config(cfg, data, log_level="debug")
        env = clean_env()
        async with serving(tmp_path, "--config", str(cfg), env=env) as p:
            async with grpc.aio.insecure_channel(p.address) as ch:
                c = Client(ch, KEY)
                await c.profiles.UpsertCustomerProfiles(iter([ppb.CustomerProfileBatch(
                    profiles=[ppb.CustomerProfile(customer_key=k, vector=[1, 0, 0, 0],
                                                  version=1, source_time_ms=5)
                              for k in PHONES])]))
                stale = await c.profiles.UpsertCustomerProfile(ppb.CustomerProfile(
                    customer_key=PHONES[0], vector=[1, 0, 0, 0], version=1, source_time_ms=4))
                assert stale.stale == 1
                await c.router.SetAgentState(login("a1", "sales"))
                for i, k in enumerate(PHONES[:6]):
                    await c.router.RouteContact(contact(f"c{i}", customer_key=k))
                for bad in (PHONES[7] + "\n", PHONES[8] * 30):
                    try:
                        await c.router.RouteContact(contact("bad", customer_key=bad))
                    except grpc.aio.AioRpcError as err:
                        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
                    else:
                        raise AssertionError("a bad key was accepted")
                await c.privacy.OptOut(xpb.OptOutRequest(customer_key=PHONES[9]))
                await c.privacy.WithdrawOptOut(xpb.OptOutRequest(customer_key=PHONES[9]))
                await c.privacy.BulkOptOut(iter([xpb.BulkOptOutRequest(
                    customer_keys=PHONES[10:15], replace=True)]))
                t = await c.privacy.RequestDeletion(
                    xpb.RequestDeletionRequest(customer_key=PHONES[15]))
                for _ in range(100):
                    got = await c.privacy.GetDeletion(xpb.GetDeletionRequest(
                        ticket_id=t.ticket_id))
                    if got.status == xpb.DELETION_STATUS_COMPLETED:
                        break
                    await asyncio.sleep(0.05)
                assert got.status == xpb.DELETION_STATUS_COMPLETED
            assert await p.terminate() == 0
            logs = p.stderr() + "\n".join(p.banner)

        assert '"contact_routed"' in logs and '"deletion_completed"' in logs  # debug was on
        written = [f for f in tmp_path.rglob("*") if f.is_file() and f != cfg]
        ledger = data / "privacy.jsonl"
        assert ledger in written and t.customer_digest in ledger.read_text()
        blobs = {str(f): f.read_bytes().decode("utf-8", "replace") for f in written}
        blobs["logs"] = logs
        for phone in PHONES:
            for form in (phone, phone[1:], phone[2:]):
                hits = [name for name, text in blobs.items() if form in text]
                assert not hits, f"{form} found in {hits}"

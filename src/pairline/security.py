"""Credentials, roles and transport security.

API keys
    Every key is held only as the hex SHA-256 of the key. A key belongs to one
    tenant and carries roles; a call outside its roles is PERMISSION_DENIED.

    * ``switch``: the Router (routing events from a switch);
    * ``pipeline``: Profiles (customer / agent profiles, models) and Privacy
      requests (opt-outs, deletions);
    * ``auditor``: Insights (reports, queue stats, history export) and audit read;
    * ``admin``: everything.

    Keys come from three places, merged: ``api_key_sha256`` / ``api_keys`` of a
    ``[[tenants]]`` entry (role ``admin``: these keys could do everything before
    roles existed, so an upgrade changes nothing), ``[[keys]]`` entries of the
    main configuration, and the ``keys_file`` (same ``[[keys]]`` format). The
    keys file is re-read when it changes (checked every ``keys_reload_s``) and on
    SIGHUP, so keys are added and revoked without a restart; a file that does
    not parse or validate is refused as a whole (logged) and the keys in force
    stay as they were.

Transport
    ``tls_cert_path`` + ``tls_key_path``: the server speaks TLS only.
    ``tls_client_ca_path`` as well: mutual TLS; a client must present a
    certificate signed by that CA or the handshake fails (no RPC runs).
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROLES = ("switch", "pipeline", "auditor", "admin")

# Which role a method needs, by service; methods listed in _METHOD_ROLES override.
# A method of an unknown service needs ``admin`` (fail closed).
_SERVICE_ROLES = {
    "pairline.v1.Router": "switch",
    "pairline.v1.Profiles": "pipeline",
    "pairline.v1.Privacy": "pipeline",
    "pairline.v1.Insights": "auditor",
}
_METHOD_ROLES: dict[str, str] = {
    # Reading the audit log is the auditor's (privacy officer's), not the pipeline's.
    "/pairline.v1.Privacy/ReadAudit": "auditor",
}


def role_for(method: str) -> str:
    """The role a method (``/package.Service/Method``) needs; ``admin`` covers all."""
    if method in _METHOD_ROLES:
        return _METHOD_ROLES[method]
    service = method.lstrip("/").split("/", 1)[0]
    return _SERVICE_ROLES.get(service, "admin")


def is_sha256_hex(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One credential: the SHA-256 of the key, its tenant, its roles, a name for logs."""

    sha256: str
    tenant: str
    roles: frozenset[str]
    name: str = ""

    def __post_init__(self) -> None:
        if not is_sha256_hex(self.sha256):
            raise ValueError(
                f"key {self.name or '?'}: sha256 must be 64 lowercase hex digits "
                "(the SHA-256 of the key; plain keys are not accepted here)"
            )
        if not self.tenant:
            raise ValueError(f"key {self.name or '?'}: tenant is required")
        unknown = set(self.roles) - set(ROLES)
        if not self.roles or unknown:
            raise ValueError(
                f"key {self.name or '?'}: roles must be a non-empty subset of {list(ROLES)}"
                + (f", unknown {sorted(unknown)}" if unknown else "")
            )

    def allows(self, role: str) -> bool:
        return "admin" in self.roles or role in self.roles

    @property
    def label(self) -> str:
        """How logs name the key: its name, or the first hex digits of its hash."""
        return self.name or self.sha256[:8]


_KEY_FIELDS = {"sha256", "tenant", "roles", "name"}


def parse_keys(raw: Sequence[Mapping[str, Any]], where: str = "keys") -> tuple[ApiKey, ...]:
    """``[[keys]]`` entries (``sha256``, ``tenant``, ``roles``, optional ``name``)."""
    if not isinstance(raw, list | tuple):
        raise ValueError(f"{where}: expected a list of [[keys]] tables")
    out = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where}[{i}]: expected a table")
        unknown = set(entry) - _KEY_FIELDS
        if unknown:
            hint = " (store only the SHA-256 of a key, as sha256)" if {"key", "api_key"} & unknown \
                else ""
            raise ValueError(f"{where}[{i}]: unknown fields {sorted(unknown)}{hint}")
        roles = entry.get("roles", ())
        if isinstance(roles, str):
            roles = (roles,)
        sha, tenant, name = entry.get("sha256", ""), entry.get("tenant", ""), entry.get("name", "")
        if not all(isinstance(v, str) for v in (sha, tenant, name, *roles)):
            raise ValueError(f"{where}[{i}]: sha256, tenant, name and roles are strings")
        out.append(ApiKey(sha.lower(), tenant, frozenset(roles), name))
    return tuple(out)


def build_index(keys: Iterable[ApiKey], tenants: Iterable[str]) -> dict[str, ApiKey]:
    """Hash -> key, refusing keys of unknown tenants and one hash given twice."""
    known = set(tenants)
    index: dict[str, ApiKey] = {}
    for key in keys:
        if key.tenant not in known:
            raise ValueError(f"key {key.label}: unknown tenant {key.tenant!r}")
        if key.sha256 in index:
            raise ValueError(f"key {key.label}: the same key is configured twice")
        index[key.sha256] = key
    return index


def load_keys_file(path: str | Path) -> tuple[ApiKey, ...]:
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    unknown = set(data) - {"keys"}
    if unknown:
        raise ValueError(f"{path}: only [[keys]] tables are allowed, found {sorted(unknown)}")
    return parse_keys(data.get("keys", []), f"{path}: keys")


class KeyRing:
    """The keys in force: fixed ones from the configuration plus the keys file,
    swapped whole on reload (a lookup sees the old or the new set, never a mix)."""

    __slots__ = ("_fixed", "_index", "_path", "_stamp", "_tenants")

    def __init__(
        self, fixed: Iterable[ApiKey], tenants: Iterable[str], path: str | Path | None = None
    ) -> None:
        self._fixed = tuple(fixed)
        self._tenants = tuple(tenants)
        self._path = Path(path) if path else None
        self._stamp: tuple[int, int, int] | None = None
        self._index = build_index(self._fixed, self._tenants)
        if self._path is not None:
            self.reload(force=True, strict=True)

    def lookup(self, token: str) -> ApiKey | None:
        return self._index.get(hashlib.sha256(token.encode()).hexdigest())

    def __len__(self) -> int:
        return len(self._index)

    def _file_stamp(self) -> tuple[int, int, int]:
        assert self._path is not None
        st = os.stat(self._path)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def reload(self, *, force: bool = False, strict: bool = False) -> bool:
        """Re-read the keys file if it changed (or ``force``). Returns True when the
        keys in force were replaced. A bad file raises if ``strict`` (at start),
        otherwise the error is raised to the caller to log and the old keys stay."""
        if self._path is None:
            return False
        stamp = self._file_stamp()
        if stamp == self._stamp and not force:
            return False
        try:
            index = build_index((*self._fixed, *load_keys_file(self._path)), self._tenants)
        except Exception:
            self._stamp = stamp  # do not re-parse the same bad file every poll
            raise
        self._index = index
        self._stamp = stamp
        return True


def tenant_keys(tenant: str, hashes: Iterable[str]) -> tuple[ApiKey, ...]:
    """Keys given on a ``[[tenants]]`` entry: admin of that tenant."""
    return tuple(ApiKey(h, tenant, frozenset({"admin"}), f"{tenant}#{i}")
                 for i, h in enumerate(hashes))


# ------------------------------------------------------------------ transport
@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None


def read_tls(cert_path: str, key_path: str, client_ca_path: str) -> TlsFiles | None:
    """The PEM files named by the configuration, or None for plaintext."""
    if not cert_path and not key_path:
        if client_ca_path:
            raise ValueError("tls_client_ca_path needs tls_cert_path and tls_key_path")
        return None
    if not (cert_path and key_path):
        raise ValueError("TLS needs both tls_cert_path and tls_key_path")
    ca = Path(client_ca_path).read_bytes() if client_ca_path else None
    return TlsFiles(Path(cert_path).read_bytes(), Path(key_path).read_bytes(), ca)

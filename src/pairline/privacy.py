"""Pseudonymisation of customer keys. The raw key never leaves this function."""

from __future__ import annotations

import hashlib
import hmac


class Pseudonymiser:
    """HMAC-SHA256 of customer keys under one tenant's secret."""

    __slots__ = ("_mac",)

    def __init__(self, secret: str) -> None:
        self._mac = hmac.new(secret.encode(), digestmod=hashlib.sha256)

    def digest(self, customer_key: str) -> str:
        """Hex digest of ``customer_key``; empty in, empty out."""
        if not customer_key:
            return ""
        mac = self._mac.copy()
        mac.update(customer_key.encode())
        return mac.hexdigest()

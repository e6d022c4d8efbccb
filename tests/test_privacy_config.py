"""Privacy settings from TOML: data directory, secret rotation, calendar,
deadline; bad values stop the start with a reason."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pairline.config import TenantConfig, hash_api_key, load_settings

TENANT = """
[[tenants]]
name = "acme"
api_keys = ["acme-key-0123456789"]
secret = "acme-secret-0123456789"
"""


def load(tmp_path: Path, top: str = "", tenant: str = "") -> object:
    path = tmp_path / "pairline.toml"
    path.write_text(top + "\n" + TENANT + tenant)
    return load_settings(path)


class TestPrivacySettings:
    def test_values_are_read(self, tmp_path: Path) -> None:
        """data_dir, deletion_interval_s and the tenant's rotation, calendar and
        deadline settings come from the file."""
        s = load(tmp_path, 'data_dir = "/var/lib/pairline"\ndeletion_interval_s = 2.5', """
timezone = "Europe/Berlin"
holidays = ["2027-01-18", "2027-12-25"]
deletion_deadline_days = 30.0
deletion_due_soon_business_days = 3
contact_data_ttl_s = 600.0
previous_secrets = [
  {secret = "old-secret-0123456789", until = 2027-02-01T00:00:00Z},
  {secret = "older-secret-0123456789", until = 1800000000},
]
""")
        assert s.data_dir == "/var/lib/pairline"  # type: ignore[attr-defined]
        assert s.deletion_interval_s == 2.5  # type: ignore[attr-defined]
        t = s.tenants[0]  # type: ignore[attr-defined]
        assert t.timezone == "Europe/Berlin" and t.holidays == ("2027-01-18", "2027-12-25")
        assert (t.deletion_deadline_days, t.contact_data_ttl_s) == (30.0, 600.0)
        assert t.deletion_due_soon_business_days == 3
        feb = dt.datetime(2027, 2, 1, tzinfo=dt.UTC).timestamp()
        assert t.previous_secrets == (("old-secret-0123456789", feb),
                                      ("older-secret-0123456789", 1_800_000_000.0))
        assert "old-secret" not in repr(t)  # secrets stay out of reprs (and logs)

    def test_data_dir_from_environment(self, tmp_path: Path) -> None:
        """PAIRLINE_DATA_DIR sets the ledger directory like any other setting."""
        path = tmp_path / "p.toml"
        path.write_text(TENANT)
        s = load_settings(path, {"PAIRLINE_DATA_DIR": str(tmp_path / "d")})
        assert s.data_dir == str(tmp_path / "d")

    @pytest.mark.parametrize(("tenant", "why"), [
        ('timezone = "Mars/Olympus"', "unknown timezone"),
        ('holidays = ["18/01/2027"]', "ISO dates"),
        ("deletion_deadline_days = -1.0", "deletion_deadline_days"),
        ("deletion_deadline_days = nan", "deletion_deadline_days"),
        ("deletion_due_soon_business_days = 31", "deletion_due_soon_business_days"),
        ("deletion_due_soon_business_days = -1", "deletion_due_soon_business_days"),
        ('previous_secrets = [{secret = "short", until = 1800000000}]', "16 chars"),
        ('previous_secrets = [{secret = "acme-secret-0123456789", until = 1800000000}]',
         "equals the current"),
        ('previous_secrets = [{secret = "old-secret-0123456789"}]', "until"),
        ('previous_secrets = [{secret = "old-secret-0123456789", until = "soon"}]', "until"),
    ])
    def test_bad_values_are_refused(self, tmp_path: Path, tenant: str, why: str) -> None:
        """Each bad privacy setting is a ValueError saying what is wrong."""
        with pytest.raises(ValueError, match=why):
            load(tmp_path, "", tenant)


RETENTION = ("decision_ttl_days", "profile_ttl_days", "contact_data_ttl_s")
TENANT_KW: dict[str, Any] = {
    "name": "acme",
    "api_key_sha256": (hash_api_key("acme-key-0123456789"),),
    "secret": "acme-secret-0123456789",
}


class TestRetentionSettings:
    """Nothing personal is kept without a time limit: a retention setting of 0 or
    less (the stores would then write records with no time to live), not finite,
    or beyond what a store can hold is refused, naming the setting."""

    @pytest.mark.parametrize("name", RETENTION)
    @pytest.mark.parametrize("value", ["0", "0.0", "-1", "-0.5", "nan", "inf", "-inf", "1e12"])
    def test_bad_value_in_file_is_refused(self, tmp_path: Path, name: str, value: str) -> None:
        """A bad retention value in the file stops the start, naming the setting."""
        with pytest.raises(ValueError, match=rf"tenant acme: {name} must be more than 0"):
            load(tmp_path, "", f"{name} = {value}")

    @pytest.mark.parametrize("name", RETENTION)
    @pytest.mark.parametrize("value", [0.0, -1.0, math.nan, math.inf, -math.inf])
    def test_bad_value_in_code_is_refused(self, name: str, value: float) -> None:
        """TenantConfig itself refuses it (Settings built in code, or dataclasses.replace)."""
        change: dict[str, Any] = {name: value}
        with pytest.raises(ValueError, match=rf"{name} must be more than 0"):
            TenantConfig(**TENANT_KW, **change)
        good = TenantConfig(**TENANT_KW)
        with pytest.raises(ValueError, match=name):
            replace(good, **change)

    @pytest.mark.parametrize("name", RETENTION)
    def test_small_and_long_limits_are_kept(self, tmp_path: Path, name: str) -> None:
        """Any finite time above 0 up to the bound is accepted as given."""
        most = 36_500 if name.endswith("_days") else 36_500 * 86_400
        for value in (0.001, most):
            t = load(tmp_path, "", f"{name} = {value}").tenants[0]  # type: ignore[attr-defined]
            assert getattr(t, name) == value

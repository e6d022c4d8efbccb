"""Configuration (pure unit): defaults < TOML file < PAIRLINE_* env < explicit
overrides, tenants and their keys, and every way a configuration is refused."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import pytest

from pairline.config import (
    DEMO_API_KEY,
    DEMO_TENANT,
    Settings,
    TenantConfig,
    hash_api_key,
    load_settings,
)

SECRET = "s3cret-0123456789"
HASH_A = hashlib.sha256(b"key-a").hexdigest()


def write(tmp_path: Path, text: str, name: str = "pairline.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def tenant_toml(name: str, keys: str = "", **extra: Any) -> str:
    lines = ["[[tenants]]", f'name = "{name}"', f'secret = "{SECRET}"']
    if keys:
        lines.append(keys)
    for k, v in extra.items():
        lines.append(f"{k} = {v}")
    return "\n".join(lines) + "\n"


FULL = f"""
listen = "0.0.0.0:6000"
grace_s = 3.5
log_level = "debug"
log_json = false
sweep_interval_s = 1.0
max_message_bytes = 1048576

[[tenants]]
name = "acme"
api_keys = ["plain-acme-key-1", "plain-acme-key-2"]
api_key_sha256 = ["{HASH_A}"]
secret = "{SECRET}"
customer_dim = 8
agent_dim = 5
policy = "greedy"
queue_policies = {{ vip = "diagonal", basic = "baseline" }}
relax_steps = [[30, 60], [90, 0]]
wrap_up_s = 7.0

[[tenants]]
name = "globex"
api_keys = "plain-globex-key"
secret = "{SECRET}"
"""


class TestDefaults:
    def test_no_file_no_env(self) -> None:
        """Without file, env or overrides every setting has its documented default."""
        s = load_settings(None, {})
        assert s == Settings()
        assert (s.listen, s.grace_s, s.log_level, s.log_json) == (
            "127.0.0.1:50051", 10.0, "info", True)
        assert (s.sweep_interval_s, s.max_message_bytes) == (0.25, 64 * 1024 * 1024)
        assert s.tenants == ()

    def test_env_none_is_empty(self) -> None:
        """env=None means no environment (load_settings never reads os.environ)."""
        assert load_settings(None, None) == Settings()

    def test_tenant_defaults(self, tmp_path: Path) -> None:
        """A tenant with only name, key and secret gets the TenantConfig defaults."""
        s = load_settings(write(tmp_path, tenant_toml("t", 'api_keys = "k-t"')), {})
        (t,) = s.tenants
        assert (t.customer_dim, t.agent_dim, t.policy, t.window, t.batch) == (
            16, 16, "baseline", 32, True)
        assert (t.queue_policies, t.relax_steps, t.model_path) == ((), (), "")
        assert (t.offer_timeout_s, t.wrap_up_s, t.profile_ttl_days) == (15.0, 10.0, 365.0)


class TestFile:
    def test_full_file(self, tmp_path: Path) -> None:
        """Every top-level and tenant setting in the TOML file is taken."""
        s = load_settings(write(tmp_path, FULL), {})
        assert (s.listen, s.grace_s, s.log_level, s.log_json) == (
            "0.0.0.0:6000", 3.5, "debug", False)
        assert (s.sweep_interval_s, s.max_message_bytes) == (1.0, 1048576)
        acme, globex = s.tenants
        assert (acme.name, globex.name) == ("acme", "globex")
        assert (acme.customer_dim, acme.agent_dim, acme.policy, acme.wrap_up_s) == (
            8, 5, "greedy", 7.0)
        assert acme.queue_policies == (("basic", "baseline"), ("vip", "diagonal"))
        assert acme.relax_steps == ((30.0, 60), (90.0, 0))
        assert acme.secret == SECRET

    def test_plain_keys_are_hashed_and_hashes_kept(self, tmp_path: Path) -> None:
        """api_keys are stored only as SHA-256; api_key_sha256 entries are kept as given."""
        s = load_settings(write(tmp_path, FULL), {})
        acme, globex = s.tenants
        assert acme.api_key_sha256 == (
            HASH_A, hash_api_key("plain-acme-key-1"), hash_api_key("plain-acme-key-2"))
        assert globex.api_key_sha256 == (hash_api_key("plain-globex-key"),)
        assert hash_api_key("plain-globex-key") == hashlib.sha256(
            b"plain-globex-key").hexdigest()
        assert "plain-acme-key" not in repr(s) and "plain-globex-key" not in repr(s)
        by_hash = s.tenant_by_key_hash()
        assert by_hash[HASH_A] is acme
        assert by_hash[hash_api_key("plain-globex-key")] is globex
        assert len(by_hash) == 4

    def test_single_hash_as_string(self, tmp_path: Path) -> None:
        """api_key_sha256 may be one string instead of a list."""
        s = load_settings(write(tmp_path, tenant_toml("t", f'api_key_sha256 = "{HASH_A}"')), {})
        assert s.tenants[0].api_key_sha256 == (HASH_A,)

    def test_path_from_env(self, tmp_path: Path) -> None:
        """PAIRLINE_CONFIG names the file when no path is given; an explicit path wins."""
        a = write(tmp_path, 'listen = "from-env-file:1"\n', "a.toml")
        b = write(tmp_path, 'listen = "from-arg-file:1"\n', "b.toml")
        assert load_settings(None, {"PAIRLINE_CONFIG": str(a)}).listen == "from-env-file:1"
        assert load_settings(b, {"PAIRLINE_CONFIG": str(a)}).listen == "from-arg-file:1"

    def test_missing_file(self, tmp_path: Path) -> None:
        """A named file that does not exist is an error, not silently defaults."""
        with pytest.raises(FileNotFoundError):
            load_settings(tmp_path / "nope.toml", {})


class TestPrecedence:
    def test_env_overrides_file(self, tmp_path: Path) -> None:
        """PAIRLINE_* env wins over the file, coerced to each setting's type."""
        env = {
            "PAIRLINE_LISTEN": "10.0.0.1:7000",
            "PAIRLINE_GRACE_S": "2.25",
            "PAIRLINE_LOG_JSON": "true",
            "PAIRLINE_LOG_LEVEL": "warning",
            "PAIRLINE_MAX_MESSAGE_BYTES": "2048",
        }
        s = load_settings(write(tmp_path, FULL), env)
        assert s.listen == "10.0.0.1:7000"
        assert s.grace_s == 2.25 and isinstance(s.grace_s, float)
        assert s.log_json is True  # the file said false
        assert s.log_level == "warning"
        assert s.max_message_bytes == 2048 and isinstance(s.max_message_bytes, int)
        assert s.sweep_interval_s == 1.0  # not in env: the file's
        assert [t.name for t in s.tenants] == ["acme", "globex"]

    @pytest.mark.parametrize("raw,want", [("1", True), ("TRUE", True), ("yes", True),
                                          ("on", True), ("0", False), ("false", False),
                                          ("No", False), ("off", False)])
    def test_bool_env(self, raw: str, want: bool) -> None:
        """Boolean env values accept 1/0, true/false, yes/no, on/off (any case)."""
        assert load_settings(None, {"PAIRLINE_LOG_JSON": raw}).log_json is want

    @pytest.mark.parametrize("env", [{"PAIRLINE_LOG_JSON": "maybe"},
                                     {"PAIRLINE_GRACE_S": "soon"},
                                     {"PAIRLINE_MAX_MESSAGE_BYTES": "1.5"}])
    def test_bad_env_value(self, env: dict[str, str]) -> None:
        """An env value that does not parse as its setting's type is a ValueError."""
        with pytest.raises(ValueError):
            load_settings(None, env)

    def test_unrelated_env_is_ignored(self) -> None:
        """Variables without the PAIRLINE_ prefix or naming no setting change nothing."""
        env = {"LISTEN": "x:1", "PAIRLINE_TENANTS": "x", "PAIRLINE_NOT_A_SETTING": "1"}
        assert load_settings(None, env) == Settings()

    def test_env_float_over_integer_in_file(self, tmp_path: Path) -> None:
        """A float setting written as a TOML integer (grace_s = 5) still takes a float from env."""
        path = write(tmp_path, "grace_s = 5\nsweep_interval_s = 1\n")
        assert load_settings(path, {}).grace_s == 5
        s = load_settings(path, {"PAIRLINE_GRACE_S": "2.5", "PAIRLINE_SWEEP_INTERVAL_S": "0.5"})
        assert (s.grace_s, s.sweep_interval_s) == (2.5, 0.5)

    def test_overrides_win_over_env(self, tmp_path: Path) -> None:
        """Explicit keyword overrides win over env and file; None overrides are ignored."""
        env = {"PAIRLINE_LISTEN": "env:1", "PAIRLINE_GRACE_S": "2.0"}
        s = load_settings(write(tmp_path, FULL), env, listen="flag:1", grace_s=None)
        assert s.listen == "flag:1"
        assert s.grace_s == 2.0


class TestDemo:
    def test_demo_adds_demo_tenant(self) -> None:
        """--demo adds the demo tenant with the demo key (hashed)."""
        s = load_settings(None, {}, demo=True)
        (t,) = s.tenants
        assert t.name == DEMO_TENANT
        assert t.api_key_sha256 == (hash_api_key(DEMO_API_KEY),)
        assert s.tenant_by_key_hash()[hash_api_key(DEMO_API_KEY)] is t

    def test_demo_alongside_file_tenants(self, tmp_path: Path) -> None:
        """--demo keeps the configured tenants and adds the demo one after them."""
        s = load_settings(write(tmp_path, FULL), {}, demo=True)
        assert [t.name for t in s.tenants] == ["acme", "globex", DEMO_TENANT]

    def test_demo_not_added_twice(self, tmp_path: Path) -> None:
        """A configured tenant named demo is kept as is; --demo adds no second one."""
        path = write(tmp_path, tenant_toml(DEMO_TENANT, 'api_keys = "my-own-demo-key"'))
        s = load_settings(path, {}, demo=True)
        (t,) = s.tenants
        assert t.api_key_sha256 == (hash_api_key("my-own-demo-key"),)

    def test_no_demo_without_flag(self) -> None:
        """Without --demo there is no demo tenant."""
        assert load_settings(None, {}).tenants == ()


def refused(tmp_path: Path, text: str, match: str = "") -> ValueError:
    with pytest.raises(ValueError) as err:
        load_settings(write(tmp_path, text), {})
    if match:
        assert match in str(err.value), str(err.value)
    return err.value


class TestInvalid:
    def test_unknown_top_level_key(self, tmp_path: Path) -> None:
        """An unknown top-level setting is a ValueError naming it."""
        refused(tmp_path, 'listen = "x:1"\nlisten_port = 5\n', match="listen_port")

    def test_unknown_tenant_key(self, tmp_path: Path) -> None:
        """An unknown tenant setting (a typo) is a ValueError, as every other config error."""
        refused(tmp_path, tenant_toml("t", 'api_keys = "k-t"', polcy='"greedy"'))

    @pytest.mark.parametrize("text", ['grace_s = "soon"\n', 'log_json = "no"\n',
                                      'max_message_bytes = "big"\n', "listen = 50051\n"],
                             ids=["float-as-str", "bool-as-str", "int-as-str", "str-as-int"])
    def test_file_value_of_wrong_type(self, tmp_path: Path, text: str) -> None:
        """A file value of the wrong type is a ValueError (log_json = "no" must not mean true)."""
        with pytest.raises(ValueError):
            load_settings(write(tmp_path, text), {})

    def test_duplicate_tenant_names(self, tmp_path: Path) -> None:
        """Two tenants with one name are refused."""
        text = tenant_toml("t", 'api_keys = "k-1"') + tenant_toml("t", 'api_keys = "k-2"')
        refused(tmp_path, text, match="unique")

    def test_one_key_for_two_tenants(self, tmp_path: Path) -> None:
        """One API key configured for two tenants is refused (plain or as hash)."""
        text = tenant_toml("a", 'api_keys = "shared"') + tenant_toml(
            "b", f'api_key_sha256 = "{hash_api_key("shared")}"')
        refused(tmp_path, text, match="exactly one tenant")

    def test_demo_key_already_used(self, tmp_path: Path) -> None:
        """--demo is refused when a configured tenant already uses the demo key."""
        path = write(tmp_path, tenant_toml("acme", f'api_keys = "{DEMO_API_KEY}"'))
        with pytest.raises(ValueError, match="exactly one tenant"):
            load_settings(path, {}, demo=True)

    @pytest.mark.parametrize("secret", ["", "short", "x" * 15])
    def test_short_secret(self, tmp_path: Path, secret: str) -> None:
        """A secret under 16 chars is refused."""
        text = f'[[tenants]]\nname = "t"\napi_keys = "k"\nsecret = "{secret}"\n'
        refused(tmp_path, text, match="secret")

    def test_secret_of_16_is_enough(self, tmp_path: Path) -> None:
        """Control: a 16-char secret is accepted."""
        text = f'[[tenants]]\nname = "t"\napi_keys = "k"\nsecret = "{"x" * 16}"\n'
        assert load_settings(write(tmp_path, text), {}).tenants[0].secret == "x" * 16

    @pytest.mark.parametrize("dims", [(0, 3), (4, 0), (-1, 3), (4097, 3), (4, 5000)])
    def test_bad_dims(self, tmp_path: Path, dims: tuple[int, int]) -> None:
        """Dimensions outside 1..4096 are refused."""
        text = tenant_toml("t", 'api_keys = "k"', customer_dim=dims[0], agent_dim=dims[1])
        refused(tmp_path, text, match="dimensions")

    @pytest.mark.parametrize("extra", [{"policy": '"best"'},
                                       {"queue_policies": '{ vip = "smart" }'}],
                             ids=["default", "per-queue"])
    def test_unknown_policy(self, tmp_path: Path, extra: dict[str, str]) -> None:
        """An unknown policy, default or per queue, is refused."""
        refused(tmp_path, tenant_toml("t", 'api_keys = "k"', **extra), match="unknown policy")

    def test_no_key(self, tmp_path: Path) -> None:
        """A tenant without any key is refused."""
        refused(tmp_path, tenant_toml("t"), match="api_key_sha256")

    @pytest.mark.parametrize("h", ["abc", HASH_A.upper(), "g" * 64, "plain-key"])
    def test_bad_hash(self, tmp_path: Path, h: str) -> None:
        """api_key_sha256 entries must be 64 lowercase hex digits."""
        refused(tmp_path, tenant_toml("t", f'api_key_sha256 = "{h}"'), match="api_key_sha256")

    @pytest.mark.parametrize("name", ["", "n" * 65])
    def test_bad_tenant_name(self, tmp_path: Path, name: str) -> None:
        """A tenant name must be 1..64 chars."""
        refused(tmp_path, tenant_toml(name, 'api_keys = "k"'), match="name")

    def test_relax_steps_out_of_order(self, tmp_path: Path) -> None:
        """relax_steps must be in increasing waited_s."""
        text = tenant_toml("t", 'api_keys = "k"', relax_steps="[[90, 0], [30, 60]]")
        refused(tmp_path, text, match="relax_steps")

    def test_not_toml(self, tmp_path: Path) -> None:
        """A file that is not TOML is refused (tomllib.TOMLDecodeError is a ValueError)."""
        refused(tmp_path, "listen = \n[[[")


class TestFrozen:
    def test_settings_is_frozen(self) -> None:
        """Settings cannot be changed after it is built."""
        s = load_settings(None, {}, demo=True)
        with pytest.raises(dataclasses.FrozenInstanceError):
            s.listen = "0.0.0.0:1"  # type: ignore[misc]
        with pytest.raises(dataclasses.FrozenInstanceError):
            s.tenants[0].secret = "another-secret-0123"  # type: ignore[misc]
        assert s.listen == "127.0.0.1:50051"

    def test_tenants_is_a_tuple(self, tmp_path: Path) -> None:
        """Tenants and their keys are tuples, so nothing inside can be mutated either."""
        s = load_settings(write(tmp_path, FULL), {})
        assert isinstance(s.tenants, tuple)
        assert all(isinstance(t.api_key_sha256, tuple) for t in s.tenants)
        assert isinstance(s.tenants[0], TenantConfig)

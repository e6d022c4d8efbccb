"""Model files (pure unit): the dump_model/load_model round trip, every validation
error path, and that a crafted archive can never run code when loaded."""

from __future__ import annotations

import builtins
import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pairline.errors import Code, InvalidArgument
from pairline.model import MAX_MODEL_BYTES, Model, dump_model, load_model

DC, DA = 4, 3  # the tenant's customer and agent dimensions


def good_meta(**kw: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "version": "v1",
        "outcome": "converted",
        "customer_dim": DC,
        "agent_dim": DA,
        "context_features": [],
        "trained_at_ms": 0,
        "link": "logistic",
    }
    meta.update(kw)
    return meta


def good_arrays(n_context: int = 0) -> dict[str, np.ndarray]:
    dx = DC + n_context
    return {
        "W": np.arange(dx * DA, dtype=np.float32).reshape(dx, DA) / 7,
        "wc": np.linspace(-1, 1, dx, dtype=np.float32),
        "wa": np.array([0.5, -0.25, 2.0], np.float32),
        "b": np.asarray(-0.125, np.float32),
    }


def npz(meta: Any = None, drop: tuple[str, ...] = (), **arrays: Any) -> bytes:
    """An .npz written by hand (so any field can be made wrong); ``meta`` a dict is
    JSON-encoded, anything else stored as given."""
    files: dict[str, Any] = dict(good_arrays())
    files.update(arrays)
    m = good_meta() if meta is None else meta
    files["meta"] = np.array(json.dumps(m)) if isinstance(m, dict) else m
    for name in drop:
        files.pop(name)
    buf = io.BytesIO()
    np.savez(buf, **files)
    return buf.getvalue()


def load(data: bytes, customer_dim: int = DC, agent_dim: int = DA) -> Model:
    return load_model(data, customer_dim=customer_dim, agent_dim=agent_dim)


def rejected(data: bytes, *, match: str = "", customer_dim: int = DC,
             agent_dim: int = DA) -> InvalidArgument:
    """``data`` fails validation with InvalidArgument on field ``model``."""
    with pytest.raises(InvalidArgument) as err:
        load(data, customer_dim, agent_dim)
    assert err.value.field == "model"
    assert err.value.code is Code.INVALID_ARGUMENT
    assert err.value.message.startswith("model: ")
    if match:
        assert match in err.value.message, err.value.message
    return err.value


class TestRoundTrip:
    def test_every_field_and_weight_survives(self) -> None:
        """load_model(dump_model(...)) gives back every meta field and the exact float32 weights."""
        arrays = good_arrays(n_context=2)
        data = dump_model(version="2024-06-01.a", W=arrays["W"], wc=arrays["wc"],
                          wa=arrays["wa"], b=-0.125, outcome="revenue",
                          context_features=("intent", "tenure"), trained_at_ms=1_717_171_717_171,
                          link="identity")
        m = load(data)
        assert (m.version, m.outcome, m.customer_dim, m.agent_dim) == (
            "2024-06-01.a", "revenue", DC, DA)
        assert m.context_features == ("intent", "tenure")
        assert m.trained_at_ms == 1_717_171_717_171
        assert m.link == "identity"
        assert m.input_dim == DC + 2
        for name in ("W", "wc", "wa"):
            got = getattr(m, name)
            assert got.dtype == np.float32, name
            assert got.flags.c_contiguous, name
            np.testing.assert_array_equal(got, arrays[name])
        assert m.b == -0.125
        assert m.raw == data

    def test_float64_inputs_are_stored_as_float32(self) -> None:
        """dump_model casts float64 weights to float32; loading gives those values exactly."""
        rng = np.random.default_rng(7)
        W = rng.normal(size=(DC, DA))
        wc, wa, b = rng.normal(size=DC), rng.normal(size=DA), float(rng.normal())
        m = load(dump_model(version="v", W=W, wc=wc, wa=wa, b=b))
        np.testing.assert_array_equal(m.W, W.astype(np.float32))
        np.testing.assert_array_equal(m.wc, wc.astype(np.float32))
        np.testing.assert_array_equal(m.wa, wa.astype(np.float32))
        assert m.b == float(np.float32(b))
        assert (m.link, m.outcome, m.context_features, m.trained_at_ms) == (
            "logistic", "converted", (), 0)

    def test_defaults_when_meta_omits_optional_fields(self) -> None:
        """Without link, outcome, context_features, trained_at_ms the defaults apply."""
        meta = {"version": "v", "customer_dim": DC, "agent_dim": DA}
        m = load(npz(meta))
        assert (m.link, m.outcome, m.context_features, m.trained_at_ms) == (
            "logistic", "", (), 0)

    def test_intercept_may_be_one_element(self) -> None:
        """b may be stored 0-d or as a 1-element vector."""
        m = load(npz(b=np.array([1.5], np.float32)))
        assert m.b == 1.5

    def test_compressed_archive_loads(self) -> None:
        """np.savez_compressed archives are model files too."""
        files: dict[str, Any] = dict(good_arrays())
        files["meta"] = np.array(json.dumps(good_meta()))
        buf = io.BytesIO()
        np.savez_compressed(buf, **files)
        np.testing.assert_array_equal(load(buf.getvalue()).W, good_arrays()["W"])


class TestValidation:
    def test_valid_helper_file_loads(self) -> None:
        """The hand-written file used below is valid as is (so each test breaks one thing)."""
        assert load(npz()).version == "v1"

    def test_empty(self) -> None:
        """Empty bytes are rejected."""
        rejected(b"", match="empty")

    def test_too_large(self) -> None:
        """A file over MAX_MODEL_BYTES is rejected before parsing."""
        rejected(b"PK" + b"\0" * MAX_MODEL_BYTES, match="larger than")

    @pytest.mark.parametrize("data", [b"hello, not a model", b"PK\x03\x04garbage",
                                      b"\x93NUMPY garbage"],
                             ids=["text", "broken-zip", "broken-npy"])
    def test_not_an_npz(self, data: bytes) -> None:
        """Bytes that are not an .npz archive are rejected."""
        rejected(data)

    def test_plain_npy_is_not_a_model(self) -> None:
        """A bare .npy array (np.save, not np.savez) is rejected as not a model file."""
        buf = io.BytesIO()
        np.save(buf, np.zeros((DC, DA), np.float32))
        rejected(buf.getvalue(), match="not a model file")

    def test_zip_member_that_is_not_an_array(self) -> None:
        """A zip whose 'meta' member is raw text (not .npy data) is rejected, not a crash."""
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("meta.npy", json.dumps(good_meta()))
            for name, arr in good_arrays().items():
                member = io.BytesIO()
                np.save(member, arr)
                z.writestr(f"{name}.npy", member.getvalue())
        rejected(buf.getvalue())

    def test_missing_meta(self) -> None:
        """An archive without 'meta' is rejected."""
        rejected(npz(drop=("meta",)), match="'meta'")

    @pytest.mark.parametrize("meta", [np.array(["{}", "{}"]), np.array(b"{}"),
                                      np.array(1.0)],
                             ids=["1-d", "bytes", "number"])
    def test_meta_not_a_0d_string(self, meta: np.ndarray) -> None:
        """'meta' must be a 0-d unicode string array."""
        rejected(npz(meta), match="'meta' must be a 0-d string")

    def test_meta_not_json(self) -> None:
        """'meta' that is not JSON is rejected."""
        rejected(npz(np.array("{version: v1")), match="not JSON")

    def test_meta_not_an_object(self) -> None:
        """'meta' JSON that is not an object is rejected."""
        rejected(npz(np.array("[1, 2]")), match="JSON object")

    @pytest.mark.parametrize("version", [None, "", "x" * 65, "v\n1", 7])
    def test_bad_version(self, version: Any) -> None:
        """meta.version must be 1..64 printable chars."""
        meta = good_meta(version=version)
        if version is None:
            del meta["version"]
        rejected(npz(meta), match="meta.version")

    @pytest.mark.parametrize("link", ["probit", "", None])
    def test_bad_link(self, link: Any) -> None:
        """meta.link is 'logistic' or 'identity'."""
        rejected(npz(good_meta(link=link)), match="meta.link")

    @pytest.mark.parametrize("context", ["intent", ["a", "a"], ["", "b"], [1], ["x" * 129],
                                         [f"f{i}" for i in range(65)]],
                             ids=["string", "duplicate", "empty-name", "not-str", "long-name",
                                  "too-many"])
    def test_bad_context_features(self, context: Any) -> None:
        """meta.context_features is a list of up to 64 distinct non-empty names."""
        rejected(npz(good_meta(context_features=context)), match="context_features")

    @pytest.mark.parametrize("dims", [(5, 3), (4, 2), (None, 3), (4, None)])
    def test_dims_do_not_match_tenant(self, dims: tuple[Any, Any]) -> None:
        """meta dims must equal the tenant's customer and agent dimensions."""
        rejected(npz(good_meta(customer_dim=dims[0], agent_dim=dims[1])), match="dimensions")

    def test_same_file_other_tenant_dims(self) -> None:
        """A valid file for 4x3 is rejected by a tenant with other dimensions."""
        data = npz()
        rejected(data, customer_dim=8, agent_dim=3, match="dimensions")
        rejected(data, customer_dim=4, agent_dim=5, match="dimensions")

    @pytest.mark.parametrize("trained", [-1, 1.5, "yesterday", True, 2**63, 10**30])
    def test_bad_trained_at(self, trained: Any) -> None:
        """meta.trained_at_ms is a non-negative integer that fits ModelInfo's int64."""
        rejected(npz(good_meta(trained_at_ms=trained)), match="meta.trained_at_ms")

    def test_largest_trained_at_loads(self) -> None:
        """2**63 - 1 ms is the last trained_at_ms an int64 carries."""
        assert load(npz(good_meta(trained_at_ms=2**63 - 1))).trained_at_ms == 2**63 - 1

    @pytest.mark.parametrize("name", ["customer_dim", "agent_dim"])
    def test_dims_must_be_integers(self, name: str) -> None:
        """A dimension equal to the tenant's but not an integer (4.0) is refused."""
        rejected(
            npz(good_meta(**{name: float(DC if name == "customer_dim" else DA)})),
            match=f"meta.{name}",
        )

    @pytest.mark.parametrize("outcome", [3, "o" * 65])
    def test_bad_outcome(self, outcome: Any) -> None:
        """meta.outcome is a string of up to 64 chars."""
        rejected(npz(good_meta(outcome=outcome)), match="meta.outcome")

    @pytest.mark.parametrize("name", ["W", "wc", "wa", "b"])
    def test_missing_array(self, name: str) -> None:
        """Each of W, wc, wa, b is required."""
        rejected(npz(drop=(name,)), match=f"array {name!r} is missing")

    @pytest.mark.parametrize("name", ["W", "wc", "wa", "b"])
    @pytest.mark.parametrize("dtype", [np.int32, np.int64, np.bool_, np.complex64])
    def test_non_float_array(self, name: str, dtype: Any) -> None:
        """Weights must be float arrays (int, bool, complex refused)."""
        arr = good_arrays()[name].astype(dtype)
        rejected(npz(**{name: arr}), match=f"array {name!r} must be float")

    @pytest.mark.parametrize("name,shape", [("W", (3, 4)), ("W", (4, 3, 1)), ("W", (12,)),
                                            ("wc", (3,)), ("wc", (5,)), ("wa", (4,)),
                                            ("b", (2,)), ("b", (1, 1))])
    def test_wrong_shape(self, name: str, shape: tuple[int, ...]) -> None:
        """Each array must have the shape the dims imply."""
        rejected(npz(**{name: np.zeros(shape, np.float32)}), match="shape")

    def test_w_rows_count_context_features(self) -> None:
        """With k context features W needs Dc + k rows; Dc rows are then wrong."""
        meta = good_meta(context_features=["intent"])
        rejected(npz(meta), match="array 'W' has shape")
        ok = good_arrays(n_context=1)
        assert load(npz(meta, **ok)).W.shape == (DC + 1, DA)

    @pytest.mark.parametrize("name", ["W", "wc", "wa", "b"])
    @pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
    def test_non_finite_weights(self, name: str, bad: float) -> None:
        """NaN or infinite weights are rejected."""
        arr = good_arrays()[name].copy()
        arr.reshape(-1)[0] = bad
        rejected(npz(**{name: arr}), match="NaN or infinite")

    def test_float64_weights_that_overflow_float32(self) -> None:
        """A float64 weight too large for float32 is rejected (it would become inf)."""
        arr = good_arrays()["wa"].astype(np.float64)
        arr[1] = 1e300
        with np.errstate(over="ignore"):
            rejected(npz(wa=arr), match="NaN or infinite")


class _WritesFile:
    """Unpickling this creates ``path``: proof that pickled data was executed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (builtins.open, (str(self.path), "w"))


class TestNoCodeExecution:
    def _evil_npz(self, path: Path, member: str) -> bytes:
        files: dict[str, Any] = dict(good_arrays())
        files["meta"] = np.array(json.dumps(good_meta()))
        files[member] = np.array([_WritesFile(path)], dtype=object)
        buf = io.BytesIO()
        np.savez(buf, allow_pickle=True, **files)
        return buf.getvalue()

    def test_payload_is_live(self, tmp_path: Path) -> None:
        """Control: the crafted archive does create the file when pickles are allowed."""
        marker = tmp_path / "pwned-control"
        data = self._evil_npz(marker, "W")
        with np.load(io.BytesIO(data), allow_pickle=True) as f:
            f["W"]
        assert marker.exists()

    @pytest.mark.parametrize("member", ["W", "wc", "wa", "b", "meta", "extra"])
    def test_object_array_is_rejected_unloaded(self, tmp_path: Path, member: str) -> None:
        """An object array in any member is rejected and never unpickled."""
        marker = tmp_path / f"pwned-{member}"
        data = self._evil_npz(marker, member)
        with pytest.raises(InvalidArgument) as err:
            load(data)
        assert err.value.field == "model"
        assert not marker.exists()

    def test_bare_pickle_is_rejected_unloaded(self, tmp_path: Path) -> None:
        """A plain pickle stream (not an archive) is rejected and never unpickled."""
        import pickle

        marker = tmp_path / "pwned-pickle"
        rejected(pickle.dumps(_WritesFile(marker)))
        assert not marker.exists()

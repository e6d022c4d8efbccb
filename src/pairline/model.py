"""Versioned scoring models: file format, validation, scoring.

A model file is a NumPy ``.npz`` archive (read with ``allow_pickle=False``, so an
uploaded file can never run code) holding:

==========  ===================  ==================================================
name        shape / dtype        meaning
==========  ===================  ==================================================
``meta``    0-d str (JSON)       version, outcome, customer_dim, agent_dim,
                                 context_features (list), trained_at_ms, link
``W``       f4[Dc + Dx, Da]      interaction weights (customer+context x agent)
``wc``      f4[Dc + Dx]          customer/context main effects
``wa``      f4[Da]               agent main effects
``b``       f4[] or f4[1]        intercept
==========  ===================  ==================================================

With ``x`` the customer profile followed by the context features (in the order
of ``context_features``; a missing one is 0) and ``a`` an agent profile, the
prediction is ``link(b + wc.x + wa.a + x.W.a)``; ``link`` is ``logistic``
(probabilities) or ``identity`` (values such as revenue).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np

from pairline.errors import InvalidArgument

LINKS = ("logistic", "identity")
MAX_MODEL_BYTES = 32 * 1024 * 1024
INT64_MAX = 2**63 - 1  # ModelInfo.trained_at_ms is an int64
INT32_MAX = 2**31 - 1  # ModelInfo.customer_dim, agent_dim are int32


@dataclass(frozen=True, slots=True, eq=False)
class Model:
    version: str
    outcome: str
    customer_dim: int
    agent_dim: int
    context_features: tuple[str, ...]
    trained_at_ms: int
    link: str
    W: np.ndarray
    wc: np.ndarray
    wa: np.ndarray
    b: float
    raw: bytes = b""

    @property
    def input_dim(self) -> int:
        return self.customer_dim + len(self.context_features)


def _fail(message: str) -> InvalidArgument:
    return InvalidArgument("model", message)


def _meta_int(meta: dict[str, object], name: str, default: int, most: int) -> int:
    """``meta[name]`` as an integer in ``0..most`` (the range of its field in
    ModelInfo: a model whose metadata the API cannot carry is refused on upload,
    not stored)."""
    value = meta.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= most:
        raise _fail(f"meta.{name} must be an integer in 0..{most}")
    return value


def _array(files: dict[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in files:
        raise _fail(f"array {name!r} is missing")
    arr = files[name]
    if arr.dtype.kind != "f":
        raise _fail(f"array {name!r} must be float, not {arr.dtype}")
    if arr.shape != shape and not (shape == () and arr.shape == (1,)):
        raise _fail(f"array {name!r} has shape {arr.shape}, expected {shape}")
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(out)):
        raise _fail(f"array {name!r} has NaN or infinite values (as float32)")
    return out


def load_model(data: bytes, *, customer_dim: int, agent_dim: int) -> Model:
    """Parse and validate a model file against the tenant's profile dimensions."""
    if not data:
        raise _fail("empty")
    if len(data) > MAX_MODEL_BYTES:
        raise _fail(f"larger than {MAX_MODEL_BYTES} bytes")
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise _fail("not a model file: an .npz archive of named arrays is expected")
        with loaded as npz:
            files = {name: npz[name] for name in npz.files}
        for name, value in files.items():
            if not isinstance(value, np.ndarray):  # a member that is not .npy data
                raise _fail(f"member {name!r} is not a NumPy array")
    except InvalidArgument:
        raise
    except Exception as exc:  # any malformed upload is the caller's mistake
        raise _fail(f"not a model file (.npz): {type(exc).__name__}: {exc}") from None
    if "meta" not in files or files["meta"].dtype.kind != "U" or files["meta"].shape != ():
        raise _fail("'meta' must be a 0-d string array holding JSON")
    try:
        meta = json.loads(str(files["meta"]))
    except json.JSONDecodeError as exc:
        raise _fail(f"'meta' is not JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise _fail("'meta' must be a JSON object")
    version = meta.get("version")
    if not isinstance(version, str) or not 1 <= len(version) <= 64 or not version.isprintable():
        raise _fail("meta.version must be a string of 1..64 printable chars")
    link = meta.get("link", "logistic")
    if link not in LINKS:
        raise _fail(f"meta.link must be one of {LINKS}")
    context = meta.get("context_features", [])
    if (
        not isinstance(context, list)
        or len(context) > 64
        or not all(isinstance(c, str) and 0 < len(c) <= 128 for c in context)
        or len(set(context)) != len(context)
    ):
        raise _fail("meta.context_features must be up to 64 distinct names")
    if meta.get("customer_dim") != customer_dim or meta.get("agent_dim") != agent_dim:
        raise _fail(
            f"dimensions {meta.get('customer_dim')}x{meta.get('agent_dim')} do not match "
            f"the tenant's profiles ({customer_dim}x{agent_dim})"
        )
    trained_at = _meta_int(meta, "trained_at_ms", 0, INT64_MAX)
    for name, want in (("customer_dim", customer_dim), ("agent_dim", agent_dim)):
        _meta_int(meta, name, want, INT32_MAX)  # (equal to the tenant's: checked above)
    outcome = meta.get("outcome", "")
    if not isinstance(outcome, str) or len(outcome) > 64:
        raise _fail("meta.outcome must be a string of up to 64 chars")
    dx = customer_dim + len(context)
    return Model(
        version=version,
        outcome=outcome,
        customer_dim=customer_dim,
        agent_dim=agent_dim,
        context_features=tuple(context),
        trained_at_ms=trained_at,
        link=link,
        W=_array(files, "W", (dx, agent_dim)),
        wc=_array(files, "wc", (dx,)),
        wa=_array(files, "wa", (agent_dim,)),
        b=float(_array(files, "b", ()).reshape(-1)[0]),
        raw=data,
    )


def dump_model(
    *,
    version: str,
    W: np.ndarray,
    wc: np.ndarray,
    wa: np.ndarray,
    b: float,
    outcome: str = "converted",
    context_features: tuple[str, ...] = (),
    trained_at_ms: int = 0,
    link: str = "logistic",
) -> bytes:
    """Write a model file (the inverse of :func:`load_model`)."""
    dx, da = W.shape
    meta = {
        "version": version,
        "outcome": outcome,
        "customer_dim": dx - len(context_features),
        "agent_dim": da,
        "context_features": list(context_features),
        "trained_at_ms": trained_at_ms,
        "link": link,
    }
    buf = io.BytesIO()
    np.savez(
        buf,
        meta=np.array(json.dumps(meta)),
        W=np.asarray(W, dtype=np.float32),
        wc=np.asarray(wc, dtype=np.float32),
        wa=np.asarray(wa, dtype=np.float32),
        b=np.asarray(b, dtype=np.float32),
    )
    return buf.getvalue()

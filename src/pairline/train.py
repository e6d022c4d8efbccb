"""Model training: fit the scoring model of :mod:`pairline.model` from the outcome
history of handled contacts, evaluate it on held-out rows against the same model
without interaction, and write a model file the server loads.

History file
============

One row per handled contact: a CSV file with a header line (UTF-8, a BOM is
allowed), or a Parquet file (``.parquet`` / ``.pq``) when ``pyarrow`` is
installed. Columns, in any order:

=================  ========  ===============================================
column             required  meaning
=================  ========  ===============================================
``outcome``        yes       the observed outcome: 0 or 1 for the logistic
                             link, any finite number for the identity link
                             (another column may be named instead: see
                             ``outcome_column``)
``mode``           yes       the mode of the decision that routed the contact:
                             ``PAIRED``, ``CONTROL``, ``NO_PROFILE``,
                             ``BASELINE``, ``DEGRADED``, ``QUEUED`` or
                             ``OPTED_OUT`` (case-insensitive; ``MODE_PAIRED``
                             and the wire numbers 1..7 are accepted too)
``c_0..c_{Dc-1}``  yes       the customer profile the contact was routed with
``a_0..a_{Da-1}``  yes       the agent profile of the agent who handled it
``ctx_<name>``     no        a context feature ``<name>``; an empty cell is 0
                             (as in serving, where a missing feature is 0)
``decided_at_ms``  no        when the decision was made (Unix ms, integer);
                             needed for ``split="time"``
=================  ========  ===============================================

Any other column (contact ids, queue, ...) is ignored and listed in
:attr:`History.ignored_columns`. Profile columns must be numbered from 0 without
gaps. A row whose customer cells (or agent cells) are *all* empty has no profile
(typically a ``NO_PROFILE`` contact whose customer was unknown): it is skipped and
counted in :attr:`History.rows_without_profile`. Anything else that is not a
finite number (a partly empty profile, ``abc``, ``NaN``, ``inf``) is a
:class:`ValueError` naming the column and the line (CSV) or row (Parquet).

Which rows train the model (selection bias)
===========================================

``PAIRED`` contacts went to the agent the current model chose, so their
(customer, agent) pairs are drawn from the model's own preferences, and a model
fitted or evaluated on them learns and grades the current model's choices. By
default :func:`fit` therefore uses only the rows routed *without* the model's
choice, :data:`OFF_POLICY_MODES` (``CONTROL`` slots of the benchmark, baseline
and monitor-mode ``BASELINE`` decisions, ``DEGRADED`` decisions, and
``NO_PROFILE`` decisions whose customer has a profile in the history), as long
as there are at least ``max(MIN_OFF_POLICY_ROWS, ROWS_PER_PARAMETER * p)`` of
them, ``p`` the number of parameters of the interaction model (1000 for 4x4
profiles). Otherwise it uses every row but the opted-out ones and says so in the
metrics' ``warning``. ``OPTED_OUT`` rows are never used: an opted-out customer is
not routed on their data, and their data does not train the model either.
``QUEUED`` rows (the contact waited; the decision that finally assigned it is
not known) are not off-policy either.

Fitting
=======

Parameters ``b, wc, wa, W`` of ``link(b + wc.x + wa.a + x.W.a)``, ``x`` the
customer profile followed by the context features, minimise the mean loss plus
``l2 / 2 * (|wc|^2 + |wa|^2 + |W|_F^2)`` (the intercept is not penalised): the
log loss with L-BFGS-B for the logistic link, the squared error / 2 in closed form
(ridge normal equations) for the identity link. The optimiser works on centred
and scaled inputs (a reparametrisation: the objective and the result are those of
the raw weights), so an hour of day or a tenure in days converges as fast as a
standardised profile. The no-interaction comparison model is the same fit with
``W = 0``.

The rows used are split into a training part and a held-out part (seeded random
``holdout`` share, or the latest ``holdout`` share by ``decided_at_ms``). Both
models are fitted on the training part and evaluated on the held-out part, with
the weights rounded to float32 exactly as written to the model file; the model
returned (and written) is the one fitted on the training part, so the figures
describe the very file the server loads.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from scipy.linalg import LinAlgError, lstsq, solve
from scipy.optimize import minimize
from scipy.stats import rankdata

from pairline.domain import Mode
from pairline.errors import PairlineError
from pairline.model import LINKS, Model, dump_model, load_model

F8 = npt.NDArray[np.float64]

MODES: tuple[str, ...] = tuple(m.name for m in Mode)
OFF_POLICY_MODES: tuple[str, ...] = ("BASELINE", "CONTROL", "DEGRADED", "NO_PROFILE")
NEVER_USED_MODES: tuple[str, ...] = ("OPTED_OUT",)
MIN_OFF_POLICY_ROWS = 1000
ROWS_PER_PARAMETER = 10
DEFAULT_L2 = 1e-3
SPLITS = ("random", "time")
MAX_CONTEXT_FEATURES = 64  # as pairline.model.load_model accepts
_MIN_ROWS = 20
_CHUNK_ROWS = 8192
_PROFILE = re.compile(r"(c|a)_(\d+)")


# --------------------------------------------------------------------- history


@dataclass(frozen=True, slots=True, eq=False)
class History:
    """The rows of a history file, as arrays (``n`` rows with profiles).

    ``customer`` f8[n, Dc], ``agent`` f8[n, Da], ``context`` f8[n, Dx] (columns in
    the order of ``context_features``), ``outcome`` f8[n], ``mode`` str[n] (names
    of :class:`pairline.domain.Mode`), ``decided_at_ms`` i8[n] or None, ``lines``
    i8[n] the line (CSV) or row (Parquet) each row came from, for messages.
    Built by :func:`read_history`, or directly from arrays (validated)."""

    outcome: F8
    mode: npt.NDArray[np.str_]
    customer: F8
    agent: F8
    context: F8 | None = None
    context_features: tuple[str, ...] = ()
    decided_at_ms: npt.NDArray[np.int64] | None = None
    lines: npt.NDArray[np.int64] | None = None
    rows_without_profile: int = 0
    ignored_columns: tuple[str, ...] = ()
    source: str = ""

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        outcome = np.asarray(self.outcome, dtype=np.float64).reshape(-1)
        n = outcome.shape[0]
        customer = np.asarray(self.customer, dtype=np.float64)
        agent = np.asarray(self.agent, dtype=np.float64)
        if customer.ndim != 2 or customer.shape[0] != n or customer.shape[1] < 1:
            raise ValueError(
                f"customer must be an array of shape ({n}, Dc >= 1), not {customer.shape}"
            )
        if agent.ndim != 2 or agent.shape[0] != n or agent.shape[1] < 1:
            raise ValueError(f"agent must be an array of shape ({n}, Da >= 1), not {agent.shape}")
        features = tuple(self.context_features)
        _check_context_names(features)
        context = (
            np.zeros((n, 0)) if self.context is None else np.asarray(self.context, dtype=np.float64)
        )
        if context.shape != (n, len(features)):
            raise ValueError(
                f"context must have shape ({n}, {len(features)}) for context_features "
                f"{list(features)}, not {context.shape}"
            )
        modes = np.asarray(self.mode).reshape(-1)
        if modes.dtype.kind != "U" or not np.isin(modes, MODES).all():
            modes = np.array([_mode_name(m) for m in modes], dtype="<U10")
        if modes.shape[0] != n:
            raise ValueError(f"mode must have {n} entries, not {modes.shape[0]}")
        for name, arr in (("outcome", outcome), ("customer", customer), ("agent", agent),
                          ("context", context)):
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{name} has NaN or infinite values")
        put("outcome", outcome)
        put("mode", modes)
        put("customer", customer)
        put("agent", agent)
        put("context", context)
        put("context_features", features)
        if self.decided_at_ms is not None:
            at = np.asarray(self.decided_at_ms, dtype=np.int64).reshape(-1)
            if at.shape[0] != n:
                raise ValueError(f"decided_at_ms must have {n} entries, not {at.shape[0]}")
            put("decided_at_ms", at)
        lines = np.arange(1, n + 1) if self.lines is None else np.asarray(self.lines, np.int64)
        put("lines", lines.reshape(-1))

    def __len__(self) -> int:
        return int(self.outcome.shape[0])

    @property
    def customer_dim(self) -> int:
        return int(self.customer.shape[1])

    @property
    def agent_dim(self) -> int:
        return int(self.agent.shape[1])

    @property
    def x(self) -> F8:
        """The model input of every row: customer profile, then context features."""
        assert self.context is not None
        return np.hstack([self.customer, self.context])

    def subset(self, rows: npt.NDArray[Any]) -> History:
        """The rows selected by an index or boolean mask, in that order."""
        assert self.context is not None and self.lines is not None
        return History(
            outcome=self.outcome[rows],
            mode=self.mode[rows],
            customer=self.customer[rows],
            agent=self.agent[rows],
            context=self.context[rows],
            context_features=self.context_features,
            decided_at_ms=None if self.decided_at_ms is None else self.decided_at_ms[rows],
            lines=self.lines[rows],
            ignored_columns=self.ignored_columns,
            source=self.source,
        )


def _check_context_names(features: Sequence[str]) -> None:
    if len(features) > MAX_CONTEXT_FEATURES:
        raise ValueError(f"at most {MAX_CONTEXT_FEATURES} context features, not {len(features)}")
    for name in features:
        if not isinstance(name, str) or not 0 < len(name) <= 128:
            raise ValueError(f"context feature name {name!r} must be 1..128 characters")
    if len(set(features)) != len(features):
        raise ValueError(f"context feature names must be distinct: {list(features)}")


def _mode_name(value: object) -> str:
    """The Mode name of a cell: ``PAIRED``, ``paired``, ``MODE_PAIRED`` or ``1``."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        try:
            return Mode(int(value)).name
        except ValueError:
            raise ValueError(f"unknown mode {value!r}; known: {', '.join(MODES)}") from None
    text = str(value).strip().upper()
    if text.startswith("MODE_"):
        text = text[5:]
    if text.isdigit():
        return _mode_name(int(text))
    if text not in MODES:
        raise ValueError(f"unknown mode {value!r}; known: {', '.join(MODES)}")
    return text


class _Table(Protocol):
    """A history file opened for reading, column by column."""

    names: list[str]
    n: int
    lines: list[int]

    def where(self, i: int) -> str: ...

    def text(self, name: str) -> list[Any]: ...

    def numeric(self, name: str) -> tuple[F8, npt.NDArray[np.bool_]]: ...


def _parse_cells(name: str, cells: Sequence[Any], where: Any) -> tuple[F8, npt.NDArray[np.bool_]]:
    """Numbers of a column of text cells, and which cells are empty. A cell that is
    neither empty nor a finite number is an error naming the column and line."""
    empty = np.zeros(len(cells), dtype=np.bool_)
    try:
        values = np.array(cells, dtype=np.float64)  # fast path: every cell a number
    except (ValueError, TypeError):
        values = np.empty(len(cells), dtype=np.float64)
        for i, cell in enumerate(cells):
            text = "" if cell is None else str(cell).strip()
            if not text:
                empty[i] = True
                values[i] = 0.0
                continue
            try:
                values[i] = float(text)
            except ValueError:
                raise ValueError(
                    f"column {name!r}, {where(i)}: {cell!r} is not a number"
                ) from None
    bad = ~np.isfinite(values)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"column {name!r}, {where(i)}: {cells[i]!r} is not a finite number "
            "(NaN and infinity are not allowed)"
        )
    return values, empty


class _CsvTable:
    def __init__(self, path: Path) -> None:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{path}: empty file (expected a header line)")
            self.names = [h.strip() for h in header]
            width = len(self.names)
            records: list[list[str]] = []
            lines: list[int] = []
            for record in reader:
                if not record or (len(record) == 1 and not record[0].strip()):
                    continue  # a blank line
                if len(record) != width:
                    raise ValueError(
                        f"{path}, line {reader.line_num}: {len(record)} fields, "
                        f"the header has {width}"
                    )
                records.append(record)
                lines.append(reader.line_num)
        self.n = len(records)
        self.lines = lines
        self._columns = {name: i for i, name in enumerate(self.names)}
        self._records = records

    def where(self, i: int) -> str:
        return f"line {self.lines[i]}"

    def text(self, name: str) -> list[Any]:
        j = self._columns[name]
        return [r[j] for r in self._records]

    def numeric(self, name: str) -> tuple[F8, npt.NDArray[np.bool_]]:
        return _parse_cells(name, self.text(name), self.where)


class _ParquetTable:
    def __init__(self, path: Path) -> None:
        try:
            import pyarrow.parquet as pq  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            raise ValueError(
                f"{path}: reading Parquet needs pyarrow, which is not installed "
                "(pip install pyarrow), or export the history as CSV"
            ) from None
        self._table = pq.read_table(path)
        self.names = list(self._table.column_names)
        self.n = int(self._table.num_rows)
        self.lines = list(range(1, self.n + 1))

    def where(self, i: int) -> str:
        return f"row {i + 1}"

    def text(self, name: str) -> list[Any]:
        return list(self._table.column(name).to_pylist())

    def numeric(self, name: str) -> tuple[F8, npt.NDArray[np.bool_]]:
        import pyarrow as pa  # type: ignore[import-not-found,unused-ignore]

        col = self._table.column(name)
        kind = col.type
        if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
            empty = np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=np.bool_)
            values = np.asarray(
                col.fill_null(0).to_numpy(zero_copy_only=False), dtype=np.float64
            )
            bad = ~np.isfinite(values)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise ValueError(
                    f"column {name!r}, {self.where(i)}: {float(values[i])!r} is not a finite "
                    "number (NaN and infinity are not allowed)"
                )
            return values, empty
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            return _parse_cells(name, self.text(name), self.where)
        raise ValueError(f"column {name!r} has type {kind}, expected numbers")


def _open(path: Path) -> _Table:
    if path.suffix.lower() in (".parquet", ".pq"):
        return _ParquetTable(path)
    return _CsvTable(path)


def _profile_columns(names: Sequence[str], prefix: str, what: str) -> list[str]:
    found: dict[int, str] = {}
    for name in names:
        m = _PROFILE.fullmatch(name)
        if m is None or m.group(1) != prefix:
            continue
        digits = m.group(2)
        if digits != str(int(digits)):
            raise ValueError(
                f"column {name!r}: {what} columns are {prefix}_0, {prefix}_1, ... "
                "(no leading zeros)"
            )
        found[int(digits)] = name
    if not found:
        raise ValueError(f"missing column '{prefix}_0': the {what} profile columns "
                         f"{prefix}_0..{prefix}_<D-1> are required")
    for k in range(max(found) + 1):
        if k not in found:
            raise ValueError(
                f"missing column '{prefix}_{k}': {what} columns must be "
                f"{prefix}_0..{prefix}_{max(found)} without gaps"
            )
    return [found[k] for k in range(len(found))]


def _profile(table: _Table, columns: list[str], what: str) -> tuple[F8, npt.NDArray[np.bool_]]:
    """The profile matrix and which rows have no profile at all (every cell empty);
    a partly empty profile is an error."""
    values = np.empty((table.n, len(columns)), dtype=np.float64)
    empty = np.empty((table.n, len(columns)), dtype=np.bool_)
    for j, name in enumerate(columns):
        values[:, j], empty[:, j] = table.numeric(name)
    missing = np.asarray(empty.all(axis=1), dtype=np.bool_)
    partial = empty.any(axis=1) & ~missing
    if partial.any():
        i = int(np.flatnonzero(partial)[0])
        j = int(np.flatnonzero(empty[i])[0])
        raise ValueError(
            f"column {columns[j]!r}, {table.where(i)}: empty, but the row has other {what} "
            "profile values (leave every cell of a missing profile empty)"
        )
    return values, missing


def read_history(path: str | os.PathLike[str], *, outcome_column: str = "outcome") -> History:
    """Read a history file (CSV, or Parquet with pyarrow; see the module doc).

    Raises ValueError naming the file, column and line/row of the first problem."""
    p = Path(path)
    table = _open(p)
    names = table.names
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"{p}: duplicated column {duplicated[0]!r}")
    for required in (outcome_column, "mode"):
        if required not in names:
            raise ValueError(f"{p}: missing column {required!r}")
    try:
        c_cols = _profile_columns(names, "c", "customer")
        a_cols = _profile_columns(names, "a", "agent")
        ctx_cols = [n for n in names if n.startswith("ctx_")]
        features = tuple(n[4:] for n in ctx_cols)
        _check_context_names(features)

        outcome, empty = table.numeric(outcome_column)
        if empty.any():
            i = int(np.flatnonzero(empty)[0])
            raise ValueError(f"column {outcome_column!r}, {table.where(i)}: empty")
        modes = []
        for i, cell in enumerate(table.text("mode")):
            try:
                modes.append(_mode_name("" if cell is None else cell))
            except ValueError as exc:
                raise ValueError(f"column 'mode', {table.where(i)}: {exc}") from None
        customer, no_customer = _profile(table, c_cols, "customer")
        agent, no_agent = _profile(table, a_cols, "agent")
        context = np.zeros((table.n, len(ctx_cols)), dtype=np.float64)
        for j, name in enumerate(ctx_cols):
            context[:, j] = table.numeric(name)[0]  # an empty cell is 0
        decided_at = None
        if "decided_at_ms" in names:
            at, empty = table.numeric("decided_at_ms")
            bad = empty | (at < 0) | (at != np.floor(at))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise ValueError(
                    f"column 'decided_at_ms', {table.where(i)}: must be a non-negative "
                    "integer (Unix milliseconds)"
                )
            decided_at = at.astype(np.int64)
    except ValueError as exc:
        raise ValueError(f"{p}: {exc}") from None
    known = {outcome_column, "mode", "decided_at_ms", *c_cols, *a_cols, *ctx_cols}
    keep = ~(no_customer | no_agent)
    return History(
        outcome=outcome[keep],
        mode=np.array(modes, dtype="<U10")[keep],
        customer=customer[keep],
        agent=agent[keep],
        context=context[keep],
        context_features=features,
        decided_at_ms=None if decided_at is None else decided_at[keep],
        lines=np.asarray(table.lines, dtype=np.int64)[keep],
        rows_without_profile=int((~keep).sum()),
        ignored_columns=tuple(n for n in names if n not in known),
        source=str(p),
    )


def write_history(path: str | os.PathLike[str], history: History) -> None:
    """Write ``history`` as a CSV history file (floats written exactly)."""
    assert history.context is not None
    header = ["outcome", "mode"]
    header += [f"c_{j}" for j in range(history.customer_dim)]
    header += [f"a_{j}" for j in range(history.agent_dim)]
    header += [f"ctx_{name}" for name in history.context_features]
    if history.decided_at_ms is not None:
        header.append("decided_at_ms")
    with Path(path).open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for i in range(len(history)):
            row: list[str] = [repr(float(history.outcome[i])), str(history.mode[i])]
            row += [repr(float(v)) for v in history.customer[i]]
            row += [repr(float(v)) for v in history.agent[i]]
            row += [repr(float(v)) for v in history.context[i]]
            if history.decided_at_ms is not None:
                row.append(str(int(history.decided_at_ms[i])))
            writer.writerow(row)


# ------------------------------------------------------------ scoring, metrics


def raw_scores(model: Model, x: F8, a: F8) -> F8:
    """``b + wc.x + wa.a + x.W.a`` of each row (in float64 over the model's weights)."""
    W = model.W.astype(np.float64)
    x = np.asarray(x, dtype=np.float64)
    a = np.asarray(a, dtype=np.float64)
    return np.asarray(
        model.b + x @ model.wc.astype(np.float64) + a @ model.wa.astype(np.float64)
        + np.einsum("nj,nj->n", x @ W, a),
        dtype=np.float64,
    )


def predict(model: Model, x: F8, a: F8) -> F8:
    """The model's prediction of each row: ``link(raw_scores)``. ``x`` is the
    customer profile followed by the model's context features."""
    z = raw_scores(model, x, a)
    return _sigmoid(z) if model.link == "logistic" else z


def _sigmoid(z: F8) -> F8:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)), dtype=np.float64)


def log_loss(y: F8, p: F8, *, eps: float = 1e-15) -> float:
    """Mean negative log likelihood of 0/1 outcomes ``y`` under probabilities ``p``."""
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(y, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def _log_loss_logits(y: F8, z: F8) -> float:
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def auc(y: F8, score: F8) -> float | None:
    """Area under the ROC curve of ``score`` for 0/1 outcomes ``y``: the chance
    that a random positive scores above a random negative, ties counting half
    (the Mann-Whitney U statistic over n1 * n0). None when a class is absent."""
    y = np.asarray(y)
    pos = y == 1
    n1 = int(pos.sum())
    n0 = int(y.shape[0] - n1)
    if n1 == 0 or n0 == 0:
        return None
    ranks = rankdata(np.asarray(score, dtype=np.float64))  # ties get their average rank
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _evaluate(link: str, y: F8, z: F8) -> dict[str, float | None]:
    if link == "logistic":
        return {"log_loss": _log_loss_logits(y, z), "auc": auc(y, z)}
    err = y - z
    sst = float(np.sum((y - y.mean()) ** 2))
    return {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "r2": None if sst == 0 else float(1 - np.sum(err**2) / sst),
    }


# --------------------------------------------------------------------- fitting


@dataclass(frozen=True, slots=True)
class _Fit:
    b: float
    wc: F8
    wa: F8
    W: F8
    converged: bool
    iterations: int
    message: str = ""


def _unpack(theta: F8, dx: int, da: int, interaction: bool) -> tuple[float, F8, F8, F8]:
    b = float(theta[0])
    wc = theta[1 : 1 + dx]
    wa = theta[1 + dx : 1 + dx + da]
    W = theta[1 + dx + da :].reshape(dx, da) if interaction else np.zeros((dx, da))
    return b, wc, wa, W


class _Standard:
    """Centring and scaling of x and a, as a reparametrisation: the optimiser works
    on weights ``s`` of the standardised inputs ``(x - mx) / sx``, ``(a - ma) / sa``
    (well conditioned even for an hour-of-day or a tenure in days), while the loss,
    the penalty and the result are those of the raw weights ``raw(s)``, a linear
    map. So the problem solved is exactly the one the module doc states."""

    __slots__ = ("a", "da", "dx", "interaction", "ma", "mx", "sa", "sx", "x")

    def __init__(self, x: F8, a: F8, interaction: bool) -> None:
        self.mx, self.sx = x.mean(axis=0), _scale(x)
        self.ma, self.sa = a.mean(axis=0), _scale(a)
        self.x = (x - self.mx) / self.sx
        self.a = (a - self.ma) / self.sa
        self.dx, self.da = x.shape[1], a.shape[1]
        self.interaction = interaction

    def raw(self, s: F8) -> F8:
        """Raw ``[b, wc, wa, vec(W)]`` with the same scores as standardised ``s``."""
        b, wc, wa, W = _unpack(s, self.dx, self.da, self.interaction)
        Wr = W / np.outer(self.sx, self.sa)
        out = np.empty_like(s)
        out[0] = b - wc @ (self.mx / self.sx) - wa @ (self.ma / self.sa) + self.mx @ Wr @ self.ma
        out[1 : 1 + self.dx] = wc / self.sx - Wr @ self.ma
        out[1 + self.dx : 1 + self.dx + self.da] = wa / self.sa - Wr.T @ self.mx
        if self.interaction:
            out[1 + self.dx + self.da :] = Wr.ravel()
        return out

    def raw_adjoint(self, g: F8) -> F8:
        """``J' g``, ``J`` the (constant) Jacobian of :meth:`raw`."""
        gb, gc, ga, gW = _unpack(g, self.dx, self.da, self.interaction)
        out = np.empty_like(g)
        out[0] = gb
        out[1 : 1 + self.dx] = (gc - gb * self.mx) / self.sx
        out[1 + self.dx : 1 + self.dx + self.da] = (ga - gb * self.ma) / self.sa
        if self.interaction:
            gWr = gW - np.outer(gc, self.ma) - np.outer(self.mx, ga)
            gWr += gb * np.outer(self.mx, self.ma)
            out[1 + self.dx + self.da :] = (gWr / np.outer(self.sx, self.sa)).ravel()
        return out

    def jacobian(self, size: int) -> F8:
        return np.column_stack([self.raw(e) for e in np.eye(size)])


def _scale(v: F8) -> F8:
    sd = v.std(axis=0)
    return np.where(sd > 1e-12 * np.maximum(1.0, np.abs(v).max(axis=0)), sd, 1.0)


def _size(dx: int, da: int, interaction: bool) -> int:
    return 1 + dx + da + (dx * da if interaction else 0)


_GRAD_ZERO = 1e-7  # a logistic fit's gradient this small is at its optimum


def _fit_logistic(x: F8, a: F8, y: F8, l2: float, interaction: bool) -> _Fit:
    n, dx = x.shape
    da = a.shape[1]
    std = _Standard(x, a, interaction)
    xs, as_ = std.x, std.a
    theta0 = np.zeros(_size(dx, da, interaction))
    rate = float(np.clip(y.mean(), 1e-6, 1 - 1e-6))
    theta0[0] = math.log(rate / (1 - rate))

    def loss(theta: F8) -> tuple[float, F8]:
        b, wc, wa, W = _unpack(theta, dx, da, interaction)
        z = b + xs @ wc + as_ @ wa
        if interaction:
            z = z + np.einsum("nj,nj->n", xs @ W, as_)
        value = float(np.mean(np.logaddexp(0.0, z) - y * z))
        r = (_sigmoid(z) - y) / n
        grad = np.empty_like(theta)
        grad[0] = r.sum()
        grad[1 : 1 + dx] = xs.T @ r
        grad[1 + dx : 1 + dx + da] = as_.T @ r
        if interaction:
            grad[1 + dx + da :] = (xs.T @ (as_ * r[:, None])).ravel()
        penalised = std.raw(theta)
        penalised[0] = 0.0  # the intercept is not penalised
        value += 0.5 * l2 * float(penalised @ penalised)
        grad += std.raw_adjoint(l2 * penalised)
        return value, grad

    res = minimize(
        loss, theta0, jac=True, method="L-BFGS-B",
        options={"maxiter": 5000, "maxcor": 20, "ftol": 1e-13, "gtol": 1e-9},
    )
    raw = std.raw(np.asarray(res.x, dtype=np.float64))
    b, wc, wa, W = _unpack(raw, dx, da, interaction)
    # L-BFGS-B may stop on a failed line search ("ABNORMAL") at the optimum itself,
    # where rounding leaves no descent to find: converged if the gradient is ~0.
    converged = bool(res.success) or float(np.abs(res.jac).max()) <= _GRAD_ZERO
    return _Fit(b, wc.copy(), wa.copy(), W.copy(), converged, int(res.nit),
                str(res.message))


def _design(x: F8, a: F8, interaction: bool) -> Iterator[tuple[int, F8]]:
    """Chunks of the design matrix ``[1, x, a, vec(x a')]`` (row-major ``W`` order)."""
    for start in range(0, x.shape[0], _CHUNK_ROWS):
        xs = x[start : start + _CHUNK_ROWS]
        as_ = a[start : start + _CHUNK_ROWS]
        parts = [np.ones((xs.shape[0], 1)), xs, as_]
        if interaction:
            parts.append((xs[:, :, None] * as_[:, None, :]).reshape(xs.shape[0], -1))
        yield start, np.hstack(parts)


def _fit_identity(x: F8, a: F8, y: F8, l2: float, interaction: bool) -> _Fit:
    """Ridge normal equations over the standardised design, penalty on raw weights."""
    n, dx = x.shape
    da = a.shape[1]
    size = _size(dx, da, interaction)
    std = _Standard(x, a, interaction)
    gram = np.zeros((size, size))
    rhs = np.zeros(size)
    for start, Z in _design(std.x, std.a, interaction):
        gram += Z.T @ Z
        rhs += Z.T @ y[start : start + Z.shape[0]]
    J = std.jacobian(size)[1:]  # raw penalised weights = J s
    lhs = gram / n + l2 * (J.T @ J)
    try:
        theta = solve(lhs, rhs / n, assume_a="sym")
    except LinAlgError:
        theta = lstsq(lhs, rhs / n)[0]
    raw = std.raw(np.asarray(theta, dtype=np.float64))
    b, wc, wa, W = _unpack(raw, dx, da, interaction)
    return _Fit(b, wc.copy(), wa.copy(), W.copy(), True, 1)


_FITTERS = {"logistic": _fit_logistic, "identity": _fit_identity}


def n_parameters(x_dim: int, agent_dim: int, *, interaction: bool = True) -> int:
    """Number of fitted parameters: intercept, main effects and (optionally) W."""
    return 1 + x_dim + agent_dim + (x_dim * agent_dim if interaction else 0)


def _select(
    history: History, use_modes: Collection[str] | None, threshold: int
) -> tuple[npt.NDArray[np.bool_], list[str], list[str]]:
    """Rows to train on, the modes they have, and warnings."""
    warnings: list[str] = []
    if use_modes is not None:
        wanted = {_mode_name(m) for m in use_modes}
        mask = np.isin(history.mode, sorted(wanted))
        if "PAIRED" in wanted and (history.mode[mask] == "PAIRED").any():
            warnings.append(
                "PAIRED rows (routed by the current model's choice) are in the training and "
                "held-out data: the fit and this evaluation may favour the current model's choices"
            )
    else:
        off = np.isin(history.mode, OFF_POLICY_MODES)
        if int(off.sum()) >= threshold:
            mask = off
        else:
            mask = ~np.isin(history.mode, NEVER_USED_MODES)
            warnings.append(
                f"only {int(off.sum())} rows were routed without the model's choice "
                f"({', '.join(OFF_POLICY_MODES)}); at least {threshold} are needed to train on "
                "them alone, so every row but OPTED_OUT was used, PAIRED rows included: the fit "
                "and this evaluation may favour the current model's choices"
            )
    used = sorted({str(m) for m in history.mode[mask]})
    return mask, used, warnings


def _split(
    history: History, holdout: float, split: str, seed: int
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    n = len(history)
    k = min(n - 1, max(1, round(holdout * n)))
    if split == "time":
        if history.decided_at_ms is None:
            raise ValueError("split='time' needs the decided_at_ms column")
        order = np.argsort(history.decided_at_ms, kind="stable")
    else:
        order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: n - k]), np.sort(order[n - k :])


def _model(fit: _Fit, *, version: str, outcome: str, link: str, features: tuple[str, ...],
           customer_dim: int, agent_dim: int, trained_at_ms: int) -> Model:
    data = dump_model(
        version=version, W=fit.W, wc=fit.wc, wa=fit.wa, b=fit.b, outcome=outcome,
        context_features=features, trained_at_ms=trained_at_ms, link=link,
    )
    return load_model(data, customer_dim=customer_dim, agent_dim=agent_dim)


def fit(
    history: History | str | os.PathLike[str],
    *,
    version: str,
    outcome: str = "converted",
    link: str = "logistic",
    l2: float = DEFAULT_L2,
    interaction: bool = True,
    use_modes: Collection[str] | None = None,
    holdout: float = 0.2,
    split: str = "random",
    seed: int = 0,
    min_off_policy_rows: int | None = None,
    trained_at_ms: int | None = None,
) -> tuple[Model, dict[str, Any]]:
    """Fit a model from ``history`` and evaluate it on held-out rows.

    Returns the model (a validated :class:`pairline.model.Model` whose ``raw`` is
    the model file's bytes) and JSON-ready metrics: which modes and how many rows
    were used, a ``warning`` (None when all is well), and under ``heldout`` the
    held-out figures of the interaction model, the no-interaction model and a
    constant, side by side (``log_loss`` and ``auc`` for the logistic link,
    ``rmse`` and ``r2`` for the identity link). ``outcome`` is the name of what the
    model predicts, stored in the file; ``use_modes`` None selects rows as the module
    doc says, a collection of mode names selects exactly those rows."""
    if not isinstance(history, History):
        history = read_history(history)
    if link not in LINKS:
        raise ValueError(f"link must be one of {LINKS}, not {link!r}")
    if not (isinstance(version, str) and 1 <= len(version) <= 64 and version.isprintable()):
        raise ValueError("version must be a string of 1..64 printable characters")
    if not isinstance(outcome, str) or len(outcome) > 64:
        raise ValueError("outcome must be a name of up to 64 characters")
    if not (math.isfinite(l2) and l2 >= 0):
        raise ValueError(f"l2 must be a finite number >= 0, not {l2}")
    if not 0 < holdout < 1:
        raise ValueError(f"holdout must be between 0 and 1, not {holdout}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    if trained_at_ms is None:
        trained_at_ms = int(time.time() * 1000)

    dc, da = history.customer_dim, history.agent_dim
    dx = dc + len(history.context_features)
    threshold = (
        max(MIN_OFF_POLICY_ROWS, ROWS_PER_PARAMETER * n_parameters(dx, da))
        if min_off_policy_rows is None else int(min_off_policy_rows)
    )
    mask, modes_used, warnings = _select(history, use_modes, threshold)
    data = history.subset(np.flatnonzero(mask))
    if len(data) < _MIN_ROWS:
        raise ValueError(
            f"{len(data)} rows to train on (modes {', '.join(modes_used) or 'none'}); "
            f"at least {_MIN_ROWS} are needed"
        )
    y = data.outcome
    if link == "logistic":
        bad = (y != 0) & (y != 1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            assert data.lines is not None
            where = f"{data.source}, " if data.source else ""
            raise ValueError(
                f"{where}line {int(data.lines[i])}: outcome {float(y[i])!r} is not 0 or 1 "
                "(the logistic link needs 0/1 outcomes; use link='identity' for values)"
            )
    train_rows, test_rows = _split(data, holdout, split, seed)
    x = data.x
    y_train = y[train_rows]
    if link == "logistic" and np.unique(y_train).size < 2:
        raise ValueError("the outcome is the same on every training row: nothing to learn")

    fitter = _FITTERS[link]
    fits = {
        "interaction": fitter(x[train_rows], data.agent[train_rows], y_train, l2, True),
        "no_interaction": fitter(x[train_rows], data.agent[train_rows], y_train, l2, False),
    }
    models = {
        name: _model(f, version=version, outcome=outcome, link=link,
                     features=data.context_features, customer_dim=dc, agent_dim=da,
                     trained_at_ms=trained_at_ms)
        for name, f in fits.items()
    }
    for name, f in fits.items():
        if not f.converged:
            warnings.append(f"the {name} fit did not converge: {f.message}")

    y_test = y[test_rows]
    heldout = {
        name: _evaluate(link, y_test, raw_scores(m, x[test_rows], data.agent[test_rows]))
        for name, m in models.items()
    }
    const = float(y_train.mean())
    const_raw = math.log(const / (1 - const)) if link == "logistic" else const
    heldout["constant"] = _evaluate(link, y_test, np.full(y_test.shape[0], const_raw))
    if link == "logistic" and heldout["interaction"]["auc"] is None:
        warnings.append("the held-out rows all have the same outcome: AUC is undefined")

    inter, plain = heldout["interaction"], heldout["no_interaction"]
    if link == "logistic":
        gain = {
            "log_loss": _diff(plain["log_loss"], inter["log_loss"]),
            "auc": _diff(inter["auc"], plain["auc"]),
        }
    else:
        gain = {"rmse": _diff(plain["rmse"], inter["rmse"]), "r2": _diff(inter["r2"], plain["r2"])}

    chosen = "interaction" if interaction else "no_interaction"
    by_mode = {m: int((history.mode == m).sum()) for m in MODES if (history.mode == m).any()}
    metrics: dict[str, Any] = {
        "version": version,
        "outcome": outcome,
        "link": link,
        "interaction": interaction,
        "l2": l2,
        "customer_dim": dc,
        "agent_dim": da,
        "context_features": list(data.context_features),
        "parameters": n_parameters(dx, da, interaction=interaction),
        "trained_at_ms": trained_at_ms,
        "source": history.source,
        "rows_read": len(history) + history.rows_without_profile,
        "rows_without_profile": history.rows_without_profile,
        "rows_by_mode": by_mode,
        "modes_used": modes_used,
        "off_policy_only": set(modes_used) <= set(OFF_POLICY_MODES),
        "min_off_policy_rows": threshold,
        "rows_used": len(data),
        "rows_train": int(train_rows.size),
        "rows_heldout": int(test_rows.size),
        "split": split,
        "holdout": holdout,
        "seed": seed,
        "ignored_columns": list(history.ignored_columns),
        "heldout": heldout,
        "interaction_gain": gain,
        "optimizer": {
            name: {"converged": f.converged, "iterations": f.iterations}
            for name, f in fits.items()
        },
        "warning": "; ".join(warnings) or None,
    }
    return models[chosen], metrics


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else float(a - b)


# ------------------------------------------------------------------------- CLI


def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("history", metavar="HISTORY",
                        help="history file: .csv, or .parquet when pyarrow is installed")
    parser.add_argument("--out", required=True, metavar="MODEL.npz",
                        help="where to write the model file")
    parser.add_argument("--version", required=True, help="model version (1..64 printable chars)")
    parser.add_argument("--outcome", default="converted",
                        help="name of the outcome the model predicts, stored in the model "
                             "(default: converted)")
    parser.add_argument("--outcome-column", default="outcome",
                        help="history column holding the outcome (default: outcome)")
    parser.add_argument("--link", choices=LINKS, default="logistic",
                        help="logistic for 0/1 outcomes, identity for values (default: logistic)")
    parser.add_argument("--l2", type=float, default=DEFAULT_L2,
                        help=f"L2 penalty on the weights (default: {DEFAULT_L2})")
    parser.add_argument("--no-interaction", action="store_true",
                        help="fit W = 0 (main effects only)")
    parser.add_argument("--modes", metavar="M1,M2",
                        help="train on exactly these modes (default: the off-policy modes "
                             f"{','.join(OFF_POLICY_MODES)} when there are enough rows)")
    parser.add_argument("--holdout", type=float, default=0.2,
                        help="share of rows held out for evaluation (default: 0.2)")
    parser.add_argument("--split", choices=SPLITS, default="random",
                        help="random (seeded) or time (latest rows held out; needs decided_at_ms)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random split")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.set_defaults(run=train_command)
    return parser


def add_train_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``train`` to a ``pairline`` subparsers object; ``ns.run(ns)`` runs it."""
    parser = subparsers.add_parser(
        "train",
        help="fit a scoring model from an outcome history",
        description="Fit a scoring model from a history of handled contacts, evaluate it on "
                    "held-out rows against the model without interaction, and write a model "
                    "file the server loads.",
    )
    return _configure(parser)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def format_report(metrics: dict[str, Any], out: str) -> str:
    """The metrics as a short readable report."""
    names = ("interaction", "no_interaction", "constant")
    keys = ("log_loss", "auc") if metrics["link"] == "logistic" else ("rmse", "r2")
    labels = {"log_loss": "log loss", "auc": "AUC", "rmse": "RMSE", "r2": "R^2"}
    shipped = "interaction" if metrics["interaction"] else "no_interaction"
    lines = [
        f"model {metrics['version']} ({metrics['link']}, outcome {metrics['outcome']}, "
        f"{metrics['customer_dim']}x{metrics['agent_dim']}"
        + (f", context {', '.join(metrics['context_features'])}" if metrics["context_features"]
           else "")
        + f") written to {out}",
        f"rows: {metrics['rows_read']} read, {metrics['rows_without_profile']} without profile, "
        f"{metrics['rows_used']} used (modes {', '.join(metrics['modes_used'])}), "
        f"{metrics['rows_train']} train, {metrics['rows_heldout']} held out ({metrics['split']})",
        "",
        f"{'held out':<10}" + "".join(
            f"{n.replace('_', ' ') + (' *' if n == shipped else ''):>18}" for n in names
        ),
    ]
    for key in keys:
        lines.append(
            f"{labels[key]:<10}" + "".join(f"{_fmt(metrics['heldout'][n][key]):>18}" for n in names)
        )
    lines.append("(* the model written)")
    if metrics["ignored_columns"]:
        lines.append(f"ignored columns: {', '.join(metrics['ignored_columns'])}")
    if metrics["warning"]:
        lines.append(f"warning: {metrics['warning']}")
    return "\n".join(lines)


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def train_command(ns: argparse.Namespace) -> int:
    """``pairline train``: read, fit, write the model file, print the evaluation.
    Returns 0, 2 for bad input (history, options), 1 when a file cannot be read
    or written."""
    modes = None
    if ns.modes:
        modes = [m for m in (s.strip() for s in ns.modes.split(",")) if m]
    try:
        history = read_history(ns.history, outcome_column=ns.outcome_column)
        model, metrics = fit(
            history, version=ns.version, outcome=ns.outcome, link=ns.link, l2=ns.l2,
            interaction=not ns.no_interaction, use_modes=modes, holdout=ns.holdout,
            split=ns.split, seed=ns.seed,
        )
        out = Path(ns.out)
        _write_atomic(out, model.raw)
    except (ValueError, PairlineError) as exc:
        print(f"pairline train: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"pairline train: {exc}", file=sys.stderr)
        return 1
    if ns.json:
        print(json.dumps({**metrics, "out": str(out), "model_bytes": len(model.raw)}, indent=2))
    else:
        print(format_report(metrics, str(out)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pairline.train HISTORY --out MODEL.npz --version V ...``"""
    summary = (__doc__ or "").split("\n\n")[0]
    parser = _configure(argparse.ArgumentParser(prog="pairline train", description=summary))
    ns = parser.parse_args(argv)
    return int(ns.run(ns))


if __name__ == "__main__":
    raise SystemExit(main())

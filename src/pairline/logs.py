"""structlog setup: JSON lines (or console), ISO timestamps, level filter, and a
redactor that keeps raw customer keys out of every log line.

Every event of a call carries its ``rpc`` and ``request_id`` (bound per call by
the guard with :func:`bind_call`: the caller's ``x-request-id``, else one made
here; per ``Connect`` event its ``request_id``, see :func:`bind_request_id`).

The redactor (:func:`redact_raw_keys`) runs on every event, after exception
formatting and before rendering, so nothing reaches the output unscrubbed:

- every key digested in the current task (see :func:`note_raw_key`, called by
  the pseudonymiser for each key on entry) is replaced wherever it appears;
- values of fields named like a customer key (``customer_key``, ``phone``,
  ``email``, ...) are replaced whole;
- anything shaped like a phone number (9+ digits with the usual separators,
  or ``+`` and 7+ digits) or an e-mail address is replaced.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import re
import secrets
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

REDACTED = "[redacted]"

# Field names whose values are raw identifiers by definition.
_KEY_FIELDS = frozenset({
    "customer_key", "customer_keys", "key", "raw_key", "phone", "phone_number", "msisdn",
    "email", "account", "account_id", "caller_id", "ani",
})
# +CC and 7..15 digits (E.164, possibly with separators), or 9+ digits in a run
# of digits and separators; e-mail addresses. Hex digests and ids are words
# (letters and digits run together), so the word boundaries leave them alone.
_PHONE = re.compile(
    r"(?<![\w+])(?:\+[\s().-]{0,2}\d(?:[\s().-]{0,2}\d){6,14}|\d(?:[\s().-]{0,2}\d){8,})"
    r"(?!\w)"
)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# Keys digested in the current task (a request): scrubbed from its log lines.
_MAX_NOTED = 8
# Shorter keys would scrub ordinary words; the patterns below still apply.
_MIN_NOTED = 6
_noted: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar(
    "pairline_raw_keys", default=()
)


# The call being handled: (rpc, request id); see bind_call.
_call: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "pairline_call", default=None
)
MAX_REQUEST_ID = 128
# Request ids made here: a random prefix per process, then a counter (unique
# across replicas and restarts, and cheaper than a random id per call).
_RID_PREFIX = f"r{secrets.token_hex(6)}-"
_rids = itertools.count(1)


# Whether debug events pass the level filter (set by configure; structlog's own
# default logs every level). Hot paths check it before building a debug event.
_debug = True


def debug_on() -> bool:
    """Whether a ``log.debug`` event would be kept (see :func:`configure`)."""
    return _debug


def new_request_id() -> str:
    return f"{_RID_PREFIX}{next(_rids):x}"


def request_id_or_new(value: object) -> str:
    """``value`` if it is a usable request id (text, printable, at most 128
    characters), else a new one."""
    if type(value) is str and 0 < len(value) <= MAX_REQUEST_ID and value.isprintable():
        return value
    return new_request_id()


def bind_call(rpc: str, request_id: str) -> None:
    """Tag every log event of the current call (task) with ``rpc`` and ``request_id``."""
    _call.set((rpc, request_id))


def bind_request_id(request_id: str) -> None:
    """Tag the current call's events with another request id (a Connect event's)."""
    call = _call.get()
    _call.set((call[0] if call is not None else "", request_id))


def current_call() -> tuple[str, str] | None:
    """(rpc, request id) of the call being handled, if any."""
    return _call.get()


def add_call(
    logger: Any, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: the call's ``rpc`` and ``request_id`` (see bind_call)."""
    call = _call.get()
    if call is not None:
        if call[0]:
            event_dict.setdefault("rpc", call[0])
        event_dict.setdefault("request_id", call[1])
    return event_dict


def note_raw_key(key: str) -> None:
    """Remember ``key`` for the current task so its log lines cannot carry it."""
    if len(key) < _MIN_NOTED:
        return
    keys = _noted.get()
    if key in keys:
        return
    _noted.set((key, *keys[: _MAX_NOTED - 1]))


def scrub(text: str) -> str:
    for key in _noted.get():
        if key in text:
            text = text.replace(key, REDACTED)
    text = _PHONE.sub(REDACTED, text)
    return _EMAIL.sub(REDACTED, text)


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, bytes):
        return scrub(value.decode("utf-8", "replace"))
    if isinstance(value, Mapping):
        return {
            k: REDACTED if isinstance(k, str) and k.lower() in _KEY_FIELDS else _clean(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_clean(v) for v in value]
    if isinstance(value, int | float | bool) or value is None:
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**8:
            # A number that may be a phone number written as an int; ints that
            # big in pairline's logs are unix ms, which are left alone.
            return value if 10**12 <= abs(value) < 10**14 else scrub(str(value))
        return value
    return scrub(repr(value))


def redact_raw_keys(
    logger: Any, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: no raw customer key survives it (see the module doc)."""
    for k in list(event_dict):
        if k.lower() in _KEY_FIELDS:
            event_dict[k] = REDACTED
        else:
            event_dict[k] = _clean(event_dict[k])
    return event_dict


class StderrLogger:
    """structlog's PrintLogger, but writing to whatever ``sys.stderr`` is at the
    time, and never raising: a line that cannot be written (stderr closed, a broken
    pipe) is dropped and counted in ``dropped``; it never fails the call that
    logged it."""

    dropped = 0

    def msg(self, message: str) -> None:
        try:
            print(message, file=sys.stderr, flush=True)
        except (OSError, ValueError):
            StderrLogger.dropped += 1

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


_STDERR = StderrLogger()


def configure(level: str = "info", json: bool = True, *, cache: bool = True) -> None:
    """``cache=False`` keeps loggers reconfigurable (structlog.testing.capture_logs)."""
    global _debug
    lvl = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    _debug = lvl <= logging.DEBUG
    logging.basicConfig(stream=sys.stderr, level=lvl, format="%(message)s")
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            add_call,
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            redact_raw_keys,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=lambda *_: _STDERR,
        cache_logger_on_first_use=cache,
    )

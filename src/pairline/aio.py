"""Small asyncio helpers."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def stop_task(task: asyncio.Task[Any] | None, *, every_s: float = 0.5) -> None:
    """Cancel ``task`` and wait until it has really ended. On Python 3.11 a
    cancellation that lands just as the future inside ``asyncio.wait_for``
    completes can be lost (the loop in the task then goes on), so the task is
    cancelled again until it is done."""
    while task is not None and not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=every_s)
    if task is not None and not task.cancelled():
        with contextlib.suppress(Exception):
            task.result()

"""Nurseries behind context managers, with the body's own error left unwrapped.

Trio wraps every exception that leaves a nursery in an ExceptionGroup. For a
context manager whose nursery only hosts helper tasks (a connection's reader,
say), that would turn a caller's ``InvalidRequest`` into an ExceptionGroup
they did not ask for. Here, an exception raised by the body comes out as
itself when the helper tasks raised nothing else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


@asynccontextmanager
async def open_helper_nursery() -> AsyncIterator[trio.Nursery]:
    body_error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            try:
                yield nursery
            except BaseException as exc:
                body_error = exc
                raise
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if body_error is not None:
            _, others = group.split(lambda exc: exc is body_error or isinstance(exc, trio.Cancelled))
            if others is None:
                raise body_error from None
        raise

"""A blocking facade over the async client, for scripts and the REPL.

It runs a trio event loop in a daemon thread and hands each call to it with
``trio.from_thread``; errors are the same typed errors the async client
raises. Use it as a context manager, or call ``close()``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import trio

from commit.client import Database, connect
from commit.values import Versioned
from commit.config import ClusterConfig
from commit.routing import Key


class SyncDatabase:
    def __init__(self, config: str | Path | ClusterConfig = "cluster.toml") -> None:
        self._ready = threading.Event()
        self._db: Database | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._startup_error: BaseException | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main, config), daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            raise self._startup_error

    async def _main(self, config: str | Path | ClusterConfig) -> None:
        try:
            async with connect(config) as db:
                self._db = db
                self._token = trio.lowlevel.current_trio_token()
                self._stop = trio.Event()
                self._ready.set()
                await self._stop.wait()
        except BaseException as exc:
            self._startup_error = exc
            self._ready.set()

    def _run(self, fn: Any, *args: Any) -> Any:
        if self._token is None or not self._thread.is_alive():
            raise RuntimeError("this SyncDatabase is closed")
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def get(self, key: Key) -> Versioned:
        assert self._db is not None
        return self._run(self._db.get, key)

    def put(self, key: Key, value: Any) -> int:
        assert self._db is not None
        return self._run(self._db.put, key, value)

    def delete(self, key: Key) -> int:
        assert self._db is not None
        return self._run(self._db.delete, key)

    def close(self) -> None:
        if self._token is not None and self._stop is not None and self._thread.is_alive():
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            self._thread.join()
        self._token = None

    def __enter__(self) -> SyncDatabase:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def connect_sync(config: str | Path | ClusterConfig = "cluster.toml") -> SyncDatabase:
    return SyncDatabase(config)

"""A client for code that is not async: Flask and Django views, scripts, threads.

::

    from leveret.blocking import BlockingClient

    with BlockingClient("amqp://guest:guest@localhost/") as client:
        client.create_task("images.resize", {"path": "a.png"})  # returns once confirmed
        print(client.call("multiply", {"x": 6, "y": 7}, timeout=5))

It runs a robust connection on an event loop in a thread of its own. Every
method is thread-safe, blocks until its work is done, and raises the same
exceptions as the async API (``UnroutableError``, ``RemoteError`` subclasses,
``TimeoutError``, ...).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

from ._connect import ConnectionLike, connect_robust, safe_url
from .amqp import DEFAULT_URL
from .exceptions import ConnectionClosedError
from .patterns import RPC, Master
from .serializers import Serializer

T = TypeVar("T")


class BlockingClient:
    """Create tasks and make RPC calls from ordinary (non-async) code.

    ``url`` defaults to ``$AMQP_URL``, else ``amqp://guest:guest@localhost/``.
    ``timeout`` is the default deadline of RPC calls.

    Raises:
        ConnectError: the broker cannot be reached (from the constructor).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        timeout: float | None = 30.0,
        serializer: str | Serializer | None = None,
        name: str = "leveret blocking client",
    ) -> None:
        self.url = url or os.environ.get("AMQP_URL", DEFAULT_URL)
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._lock = threading.Lock()
        self._closed = False
        self._thread.start()
        try:
            self._connection, self._master, self._rpc = self._run(self._open(name, serializer))
        except BaseException:
            self._stop_loop()
            raise

    async def _open(
        self, name: str, serializer: str | Serializer | None
    ) -> tuple[ConnectionLike, Master, RPC]:
        connection = await connect_robust(self.url, name=name)
        master = Master(await connection.channel(), serializer=serializer)
        rpc = await RPC.create(
            await connection.channel(publisher_confirms=False),
            timeout=self.timeout,
            serializer=serializer,
        )
        return connection, master, rpc

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise ConnectionClosedError(f"{self!r} is closed")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("BlockingClient methods cannot be called from its own loop")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def create_task(
        self, name: str, kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> None:
        """Queue a task; return once the broker confirmed it (see ``Master.create_task``:
        ``delay=`` seconds or ``eta=`` an aware datetime make it wait on the broker)."""
        self._run(self._master.create_task(name, kwargs or {}, **options))

    def call(
        self,
        name: str,
        kwargs: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        expiration: float | None = None,
        priority: int | None = None,
    ) -> Any:
        """Call a remote method and return its result (see ``RPC.call``)."""
        return self._run(
            self._rpc.call(name, kwargs, timeout=timeout, expiration=expiration, priority=priority)
        )

    def close(self) -> None:
        """Close the connection and stop the thread (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._run(self._connection.close())
            self._closed = True
        self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<BlockingClient {safe_url(self.url)}{state}>"


__all__ = ["BlockingClient"]

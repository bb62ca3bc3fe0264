"""Declare tasks and RPC methods once; run them with one command.

::

    app = leveret.App("amqp://guest:guest@localhost/")

    @app.task(retries=RetryPolicy(max_attempts=3))
    async def resize(*, path: str, width: int) -> None: ...

    @app.rpc()
    async def multiply(*, x: int, y: int) -> int:
        return x * y

    # a client
    await resize.send(path="a.png", width=640)   # returns once confirmed
    assert await multiply(x=6, y=7) == 42         # a remote call

    # a worker process: leveret run mymodule:app

A task handle is still the plain function (``resize(path=..., width=...)`` runs it
here, as a test would); ``.send()`` queues it. An RPC handle is awaited for a
remote call; its ``.func`` is the plain function. Both are typed after the
decorated function, so mypy and IDEs check the keyword arguments and result.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, overload

from ._connect import ConnectionLike, connect_robust
from .amqp import DEFAULT_URL
from .exceptions import ConfigurationError
from .patterns import RPC, Master, Observer, Observers, RetryPolicy
from .serializers import Serializer

P = ParamSpec("P")
R = TypeVar("R")


class TaskHandle(Generic[P, R]):
    """A task: call it to run the function here, ``await .send(...)`` to queue it."""

    def __init__(self, app: App, func: Callable[P, R], name: str, options: dict[str, Any]) -> None:
        self.app = app
        self.func = func
        self.name = name
        self.options = options
        functools.update_wrapper(self, func)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.func(*args, **kwargs)

    async def send(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Queue the task; return once the broker has confirmed it.

        Raises:
            TypeError: positional arguments (tasks take keyword arguments only).
            UnroutableError: no worker ever declared the task's queue.
        """
        if args:
            raise TypeError(f"{self.name}.send() takes keyword arguments only")
        master = await self.app._master()
        await master.create_task(self.name, kwargs=kwargs)

    def __repr__(self) -> str:
        return f"<task {self.name!r} of {self.app!r}>"


class RPCHandle(Generic[P, R]):
    """A remote method: ``await handle(**kwargs)`` calls it in whichever process serves
    it; ``handle.func`` is the plain function."""

    def __init__(
        self, app: App, func: Callable[P, Any], name: str, options: dict[str, Any]
    ) -> None:
        self.app = app
        self.func = func
        self.name = name
        self.options = options
        functools.update_wrapper(self, func)

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the method remotely (with the app's default timeout).

        Raises:
            TypeError: positional arguments (RPC takes keyword arguments only).
            TimeoutError, UnroutableError, RemoteError: see :meth:`RPC.call`.
        """
        if args:
            raise TypeError(f"{self.name}() takes keyword arguments only")
        rpc = await self.app._rpc()
        result: R = await rpc.call(self.name, kwargs)
        return result

    def __repr__(self) -> str:
        return f"<rpc {self.name!r} of {self.app!r}>"


class _TaskDecorator(Protocol):
    def __call__(self, func: Callable[P, R], /) -> TaskHandle[P, R]: ...


class _RPCDecorator(Protocol):
    @overload
    def __call__(self, func: Callable[P, Awaitable[R]], /) -> RPCHandle[P, R]: ...

    @overload
    def __call__(self, func: Callable[P, R], /) -> RPCHandle[P, R]: ...


class App:
    """A set of tasks and RPC methods, and how to reach the broker.

    ``url`` defaults to ``$AMQP_URL``, else ``amqp://guest:guest@localhost/``.
    ``prefix`` is put before every name (``prefix.name``). Client-side use
    connects lazily on the first ``send`` or call; ``async with app`` (or
    :meth:`close`) closes that connection. ``observers`` see the app's tasks and
    calls (by default the process-wide ones; see :class:`~leveret.patterns.Observers`).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        name: str = "leveret",
        prefix: str = "",
        serializer: str | Serializer | None = None,
        timeout: float | None = 30.0,
        observers: Observers | Iterable[Observer] | None = None,
    ) -> None:
        self.url = url or os.environ.get("AMQP_URL", DEFAULT_URL)
        self.observers = Observers.of(observers)
        self.name = name
        self.prefix = prefix
        self.serializer = serializer
        self.timeout = timeout
        self.tasks: dict[str, TaskHandle[Any, Any]] = {}
        self.rpcs: dict[str, RPCHandle[Any, Any]] = {}
        self._connection: ConnectionLike | None = None
        self._client_master: Master | None = None
        self._client_rpc: RPC | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<App {self.name!r}: {len(self.tasks)} tasks, {len(self.rpcs)} rpc methods>"

    def _name_for(self, func: Callable[..., Any], name: str | None) -> str:
        base = name or func.__name__
        return f"{self.prefix}.{base}" if self.prefix else base

    def task(
        self,
        *,
        name: str | None = None,
        prefetch_count: int | None = None,
        retries: RetryPolicy | None = None,
        queue_type: str = "classic",
        durable: bool = True,
        time_limit: float | None = None,
        dead_letter: bool = True,
        arguments: Mapping[str, Any] | None = None,
    ) -> _TaskDecorator:
        """Declare a task: ``@app.task()`` or ``@app.task(retries=..., ...)``.

        Options are those of :meth:`Master.create_worker` and apply where it runs.
        """
        options: dict[str, Any] = dict(
            prefetch_count=prefetch_count,
            retries=retries,
            queue_type=queue_type,
            durable=durable,
            time_limit=time_limit,
            dead_letter=dead_letter,
            arguments=arguments,
        )

        def declare(target: Callable[..., Any]) -> TaskHandle[Any, Any]:
            task_name = self._name_for(target, name)
            if task_name in self.tasks or task_name in self.rpcs:
                raise ConfigurationError(f"{task_name!r} is declared twice in {self!r}")
            handle = TaskHandle(self, target, task_name, options)
            self.tasks[task_name] = handle
            return handle

        return declare

    def rpc(
        self,
        *,
        name: str | None = None,
        prefetch_count: int | None = None,
        queue_type: str = "classic",
        durable: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> _RPCDecorator:
        """Declare an RPC method: ``@app.rpc()`` or ``@app.rpc(prefetch_count=..., ...)``.

        Options are those of :meth:`RPC.register` and apply where it is served.
        """
        options: dict[str, Any] = dict(
            prefetch_count=prefetch_count,
            queue_type=queue_type,
            durable=durable,
            arguments=arguments,
        )

        def declare(target: Callable[..., Any]) -> RPCHandle[Any, Any]:
            method = self._name_for(target, name)
            if method in self.tasks or method in self.rpcs:
                raise ConfigurationError(f"{method!r} is declared twice in {self!r}")
            handle: RPCHandle[Any, Any] = RPCHandle(self, target, method, options)
            self.rpcs[method] = handle
            return handle

        return declare

    # -- the client side ------------------------------------------------------------

    async def _connect(self) -> ConnectionLike:
        if self._connection is None or self._connection.is_closed:
            self._connection = await connect_robust(self.url, name=f"{self.name} client")
        return self._connection

    async def _master(self) -> Master:
        async with self._lock:
            if self._client_master is None:
                connection = await self._connect()
                self._client_master = Master(
                    await connection.channel(),
                    serializer=self.serializer,
                    observers=self.observers,
                )
            return self._client_master

    async def _rpc(self) -> RPC:
        async with self._lock:
            if self._client_rpc is None:
                connection = await self._connect()
                channel = await connection.channel(publisher_confirms=False)
                self._client_rpc = await RPC.create(
                    channel,
                    timeout=self.timeout,
                    serializer=self.serializer,
                    observers=self.observers,
                )
            return self._client_rpc

    async def close(self) -> None:
        """Close the client connection (idempotent)."""
        connection, self._connection = self._connection, None
        self._client_master = self._client_rpc = None
        if connection is not None:
            await connection.close()

    async def __aenter__(self) -> App:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- the serving side ------------------------------------------------------------

    async def start(
        self, connection: Any, *, prefetch_count: int | None = None
    ) -> tuple[Master, RPC]:
        """Start a worker for every task and serve every RPC method on ``connection``.

        Returns the :class:`Master` and :class:`RPC` that own them (close both to stop).
        """
        master = Master(
            await connection.channel(), serializer=self.serializer, observers=self.observers
        )
        for handle in self.tasks.values():
            options = dict(handle.options)
            if prefetch_count is not None:
                options["prefetch_count"] = prefetch_count
            await master.create_worker(handle.name, handle.func, **options)
        rpc = await RPC.create(
            await connection.channel(publisher_confirms=False),
            timeout=self.timeout,
            serializer=self.serializer,
            observers=self.observers,
        )
        for method in self.rpcs.values():
            options = dict(method.options)
            if prefetch_count is not None:
                options["prefetch_count"] = prefetch_count
            await rpc.register(method.name, method.func, **options)
        return master, rpc


__all__ = ["App", "RPCHandle", "TaskHandle"]

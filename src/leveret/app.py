"""Declare tasks and RPC methods once; run them with one command.

::

    app = leveret.App(prefix="images")  # AMQP_URL, else amqp://guest:guest@localhost/

    @app.task(retries=RetryPolicy(max_attempts=3))
    async def resize(*, path: str, width: int) -> None: ...

    @app.rpc
    async def multiply(*, x: int, y: int) -> int:
        return x * y

    # a client
    await resize.send(path="a.png", width=640)   # returns once confirmed
    assert await multiply.call(x=6, y=7) == 42    # a remote call

    @app.task(schedule="*/5 * * * *")            # cron (leveret[cron]), or a Schedule
    async def sweep() -> None: ...
    app.schedule(resize, every=3600, kwargs={"path": "logo.png", "width": 64})

    # a worker process: leveret run mymodule:app (it also fires the schedules)
    # a test: async with app.testing() as running: ...

A handle is still the plain function: ``resize(path=..., width=...)`` and
``multiply(x=..., y=...)`` run it here, as a unit test would; ``.send()`` queues a
task and ``.call()`` makes a remote call. Both check the keyword arguments
against the function's signature before anything is sent, and are typed after
the decorated function, so mypy and IDEs check them too.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import os
import secrets
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from ._connect import ConnectionLike, connect_robust
from ._handles import RPCHandle, TaskHandle, _RPCDecorator, _TaskDecorator
from .amqp import DEFAULT_URL
from .exceptions import ConfigurationError
from .patterns import (
    RPC,
    DeadLetter,
    Master,
    Observer,
    Observers,
    RetryPolicy,
    Schedule,
    ScheduledTask,
    Scheduler,
    list_dead_letters,
)
from .serializers import Serializer

if TYPE_CHECKING:
    from .testing import MemoryBroker, MemoryChannel

P = ParamSpec("P")
R = TypeVar("R")


class _Client:
    """An app's client side on one event loop: a connection opened on first use, and
    a Master and an RPC on it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.loop = asyncio.get_running_loop()
        self.lock = asyncio.Lock()
        self.connection: ConnectionLike | None = None
        self.master: Master | None = None
        self.rpc: RPC | None = None

    async def open(self, name: str) -> ConnectionLike:
        if self.connection is None or self.connection.is_closed:
            self.master = self.rpc = None  # they were on the closed connection
            self.connection = await connect_robust(self.url, name=name)
        return self.connection

    async def close(self) -> None:
        connection, self.connection = self.connection, None
        self.master = self.rpc = None
        if connection is not None:
            await connection.close()


class App:
    """A set of tasks and RPC methods, and how to reach the broker.

    ``url`` defaults to ``$AMQP_URL``, else ``amqp://guest:guest@localhost/``; the
    environment is read when the app connects, not when it is made (so a test's
    ``monkeypatch.setenv("AMQP_URL", ...)`` counts). ``prefix`` is put before every
    name (``prefix.name``); ``name`` (default: the prefix, else ``"leveret"``) names
    the app's connections and log lines. Client-side use connects lazily on the
    first ``send`` or call; ``async with app`` (or :meth:`close`) closes that
    connection. ``observers`` see the app's tasks and calls (by default the
    process-wide ones; see :class:`~leveret.patterns.Observers`).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        name: str | None = None,
        prefix: str = "",
        serializer: str | Serializer | None = None,
        timeout: float | None = 30.0,
        observers: Observers | Iterable[Observer] | None = None,
    ) -> None:
        self._url = url
        self.observers = Observers.of(observers)
        self.name = name or prefix or "leveret"
        self.prefix = prefix
        self.serializer = serializer
        self.timeout = timeout
        self.tasks: dict[str, TaskHandle[Any, Any]] = {}
        self.rpcs: dict[str, RPCHandle[Any, Any, Any]] = {}
        #: Periodic tasks by schedule id (see :meth:`schedule`).
        self.schedules: dict[str, ScheduledTask] = {}
        self._client: _Client | None = None

    @property
    def url(self) -> str:
        """The broker: the URL the app was given (or set here), else ``$AMQP_URL`` as
        it is now, else ``amqp://guest:guest@localhost/``."""
        return self._url or os.environ.get("AMQP_URL") or DEFAULT_URL

    @url.setter
    def url(self, url: str | None) -> None:
        self._url = url

    def __repr__(self) -> str:
        return f"<App {self.name!r}: {len(self.tasks)} tasks, {len(self.rpcs)} rpc methods>"

    def _declare(self, func: Callable[..., Any], name: str | None) -> str:
        full = name or getattr(func, "__name__", "")
        if not full:
            raise ConfigurationError(f"{func!r} has no __name__: pass name=")
        if self.prefix:
            full = f"{self.prefix}.{full}"
        if full in self.tasks or full in self.rpcs:
            raise ConfigurationError(f"{full!r} is declared twice in {self!r}")
        return full

    @overload
    def task(self, func: Callable[P, R], /) -> TaskHandle[P, R]: ...

    @overload
    def task(
        self,
        /,
        *,
        name: str | None = None,
        prefetch_count: int | None = None,
        retries: RetryPolicy | None = None,
        queue_type: str = "classic",
        durable: bool = True,
        time_limit: float | None = None,
        dead_letter: bool = True,
        arguments: Mapping[str, Any] | None = None,
        schedule: Schedule | str | None = None,
    ) -> _TaskDecorator: ...

    def task(
        self,
        func: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        prefetch_count: int | None = None,
        retries: RetryPolicy | None = None,
        queue_type: str = "classic",
        durable: bool = True,
        time_limit: float | None = None,
        dead_letter: bool = True,
        arguments: Mapping[str, Any] | None = None,
        schedule: Schedule | str | None = None,
    ) -> Any:
        """Declare a task: ``@app.task``, ``@app.task()`` or ``@app.task(retries=...)``.

        Options are those of :meth:`Master.create_worker` and apply where it runs.
        ``schedule`` (a :class:`Schedule`, or a cron expression in UTC) also runs
        it periodically, as :meth:`schedule` does.

        Raises:
            ConfigurationError: the name is taken, the function cannot take
                keyword arguments (positional-only parameters, ``*args`` alone), or
                the schedule is invalid (see :class:`Schedule`).
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
            handle: TaskHandle[Any, Any] = TaskHandle(
                self, target, self._declare(target, name), options
            )
            if schedule is not None:
                timing = Schedule(cron=schedule) if isinstance(schedule, str) else schedule
                self._add_schedule(handle, timing)
            self.tasks[handle.name] = handle
            return handle

        return declare if func is None else declare(func)

    def schedule(
        self,
        task: TaskHandle[Any, Any] | str,
        *,
        cron: str | None = None,
        every: float | datetime.timedelta | None = None,
        kwargs: Mapping[str, Any] | None = None,
        timezone: str = "UTC",
        name: str | None = None,
    ) -> ScheduledTask:
        """Run ``task`` periodically: at the ticks of ``cron`` (read in ``timezone``;
        needs ``leveret[cron]``), or ``every`` seconds (a number or a timedelta), with
        ``kwargs``. ``task`` is a handle of this app, or the name of a task served
        elsewhere. Every ``leveret run`` of the app fires its schedules, each tick
        once however many run (see :class:`~leveret.patterns.Scheduler`).

        Raises:
            ConfigurationError: see :class:`Schedule`; or the schedule's id (its
                ``name``, else the task and timing) is taken: pass ``name=``.
            TypeError: ``kwargs`` do not fit the task's signature.
        """
        timing = Schedule(cron=cron, every=every, timezone=timezone, kwargs=kwargs or {}, name=name)
        return self._add_schedule(task, timing)

    def _add_schedule(self, task: TaskHandle[Any, Any] | str, timing: Schedule) -> ScheduledTask:
        if isinstance(task, TaskHandle):
            task._check("schedule", (), dict(timing.kwargs))
            entry = ScheduledTask(task.name, timing)
        else:
            entry = ScheduledTask(task, timing)
        if entry.id in self.schedules:
            raise ConfigurationError(
                f"schedule {entry.id!r} is declared twice in {self!r}: pass name= to tell "
                "them apart"
            )
        self.schedules[entry.id] = entry
        return entry

    @overload
    def rpc(
        self, func: Callable[P, Coroutine[Any, Any, R]], /
    ) -> RPCHandle[P, Coroutine[Any, Any, R], R]: ...

    @overload
    def rpc(self, func: Callable[P, R], /) -> RPCHandle[P, R, R]: ...

    @overload
    def rpc(
        self,
        /,
        *,
        name: str | None = None,
        prefetch_count: int | None = None,
        queue_type: str = "classic",
        durable: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> _RPCDecorator: ...

    def rpc(
        self,
        func: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        prefetch_count: int | None = None,
        queue_type: str = "classic",
        durable: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> Any:
        """Declare an RPC method: ``@app.rpc``, ``@app.rpc()`` or ``@app.rpc(name=...)``.

        Options are those of :meth:`RPC.register` and apply where it is served.

        Raises:
            ConfigurationError: the name is taken, or the function cannot take
                keyword arguments (positional-only parameters, ``*args`` alone).
        """
        options: dict[str, Any] = dict(
            prefetch_count=prefetch_count,
            queue_type=queue_type,
            durable=durable,
            arguments=arguments,
        )

        def declare(target: Callable[..., Any]) -> RPCHandle[Any, Any, Any]:
            handle: RPCHandle[Any, Any, Any] = RPCHandle(
                self, target, self._declare(target, name), options
            )
            self.rpcs[handle.name] = handle
            return handle

        return declare if func is None else declare(func)

    # -- the client side ------------------------------------------------------------

    async def _session(self) -> _Client:
        """The client for this event loop and the URL as it is now: a test's new loop,
        or a URL changed since (``AMQP_URL``, ``app.url =``), gets a new connection."""
        url = self.url
        loop = asyncio.get_running_loop()
        client = self._client
        if client is not None and client.loop is loop and client.url == url:
            return client
        self._client = _Client(url)
        if client is not None and client.loop is loop:
            await client.close()
        return self._client

    async def _master(self) -> Master:
        client = await self._session()
        async with client.lock:
            connection = await client.open(f"{self.name} client")
            if client.master is None:
                client.master = Master(
                    await connection.channel(),
                    serializer=self.serializer,
                    observers=self.observers,
                )
            return client.master

    async def _rpc(self) -> RPC:
        client = await self._session()
        async with client.lock:
            connection = await client.open(f"{self.name} client")
            if client.rpc is None:
                client.rpc = await RPC.create(
                    await connection.channel(publisher_confirms=False),
                    timeout=self.timeout,
                    serializer=self.serializer,
                    observers=self.observers,
                )
            return client.rpc

    async def close(self) -> None:
        """Close the client connection (idempotent)."""
        client, self._client = self._client, None
        if client is not None and client.loop is asyncio.get_running_loop():
            await client.close()

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

    async def start_scheduler(self, connection: Any, **options: Any) -> Scheduler | None:
        """Start firing the app's schedules on a channel of ``connection`` of their
        own, or return ``None`` if it has none. Any number of processes may do so:
        each tick fires once. Close the scheduler to stop (``options`` go to
        :meth:`Scheduler.create`).
        """
        if not self.schedules:
            return None
        return await Scheduler.create(
            await connection.channel(publisher_confirms=False),
            self.name,
            self.schedules.values(),
            serializer=self.serializer,
            observers=self.observers,
            **options,
        )

    @contextlib.asynccontextmanager
    async def testing(self) -> AsyncIterator[RunningApp]:
        """Run the app on a private in-memory broker for the block, for a test.

        Starts a worker for every task and serves every RPC method on a broker of
        the block's own (no RabbitMQ), and points the app's client side at it:
        ``task.send()`` and ``method.call()`` reach those workers and callees, and
        ``app.url`` is the broker's ``memory://`` URL. Yields a :class:`RunningApp`;
        ``await running.drain()`` waits until the tasks sent so far are done. On
        exit everything is closed and the app's URL and client are as before.
        """
        from .testing import forget_brokers, get_broker

        broker = get_broker(f"memory://{self.name}-{secrets.token_hex(6)}")
        given_url, given_client = self._url, self._client
        self._url, self._client = broker.url, None
        try:
            connection = await broker.connect(name=f"{self.name} worker")
            master, rpc = await self.start(connection)
            try:
                yield RunningApp(self, broker, await connection.channel(), master, rpc)
            finally:
                await master.close(timeout=1)
                await rpc.close(timeout=1)
                await self.close()
        finally:
            self._url, self._client = given_url, given_client
            forget_brokers(broker.name)
            await broker.close()


@dataclasses.dataclass(frozen=True)
class RunningApp:
    """An app served on a private in-memory broker: what :meth:`App.testing` yields.

    Attributes:
        app: the app (its handles' ``send()`` and ``call()`` reach this broker).
        broker: the in-memory broker (``broker.queues`` to look into it).
        channel: a channel of its own on that broker, for a test to use.
        master: the :class:`Master` running the app's workers.
        rpc: the :class:`RPC` serving the app's methods.
    """

    app: App
    broker: MemoryBroker
    channel: MemoryChannel
    master: Master
    rpc: RPC

    @property
    def url(self) -> str:
        """The broker's ``memory://`` URL, for code under test that connects by URL."""
        return self.broker.url

    async def drain(self, *, timeout: float = 10.0) -> None:
        """Wait until the tasks sent so far are done, retries included (give retry
        policies short delays in tests); see :func:`leveret.testing.drain`.

        Raises:
            TimeoutError: not done within ``timeout`` seconds (the message says what
                is left).
        """
        from .testing import drain

        await drain(self.master, self.rpc, timeout=timeout)

    async def dead_letters(
        self, task: TaskHandle[Any, Any] | str, *, limit: int = 100
    ) -> list[DeadLetter]:
        """The tasks that ended in ``task``'s dead-letter queue, oldest first."""
        name = task if isinstance(task, str) else task.name
        return await list_dead_letters(self.channel, name, limit=limit)


__all__ = ["App", "RPCHandle", "RunningApp", "TaskHandle"]

"""The handles ``@app.task`` and ``@app.rpc`` return: the plain function, plus
``send``/``send_in``/``send_at``/``send_many`` and ``call`` (see :mod:`leveret.app`)."""

from __future__ import annotations

import datetime
import functools
import inspect
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Protocol, TypeVar, cast, overload

from .patterns import KeywordCall

if TYPE_CHECKING:
    from .app import App

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class _Handle:
    """What task and RPC handles share: the function, its name, its options, and the
    check of keyword arguments against its signature."""

    def __init__(
        self, app: App, func: Callable[..., Any], name: str, options: dict[str, Any]
    ) -> None:
        self.app = app
        self.func = func
        self.name = name
        self.options = options
        # Refuses, now rather than at the first task, a function keywords cannot reach.
        self._call = KeywordCall(name, func)
        functools.update_wrapper(cast(Callable[..., Any], self), func)

    def _check(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if args:
            raise TypeError(f"{self.name}.{method}() takes keyword arguments only")
        problem = self._call.check(kwargs)
        if problem is not None:
            raise TypeError(f"{self.name}.{method}(): {problem}; the function is {self._shown()}")

    def _shown(self) -> str:
        """``name(signature)``, annotations evaluated where they can be."""
        name = getattr(self.func, "__name__", repr(self.func))
        for evaluate in (True, False):
            try:
                return f"{name}{inspect.signature(self.func, eval_str=evaluate)}"
            except Exception:  # a name only imported for type checking; no signature
                continue
        return name


class TaskHandle(_Handle, Generic[P, R]):
    """A task: call it to run the function here, ``await .send(...)`` to queue it."""

    func: Callable[P, R]

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.func(*args, **kwargs)

    async def send(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Queue the task; return once the broker has confirmed it.

        Raises:
            TypeError: positional arguments, or keyword arguments that do not fit
                the function's signature (nothing is sent).
            UnroutableError: no worker ever declared the task's queue.
        """
        self._check("send", args, kwargs)
        master = await self.app._master()
        await master.create_task(self.name, kwargs=kwargs)

    async def send_in(
        self, delay: float | datetime.timedelta, /, *args: P.args, **kwargs: P.kwargs
    ) -> None:
        """Queue the task to run ``delay`` (seconds or a timedelta) from now; return
        once the broker has confirmed it. The broker holds it meanwhile (see
        ``Master.create_task``); the delay comes first and only positionally, so
        every keyword is the task's own.

        Raises:
            TypeError: as :meth:`send`.
            ConfigurationError: a negative delay, or one over ``MAX_DELAY``.
            UnroutableError: no worker ever declared the task's queue.
        """
        self._check("send_in", args, kwargs)
        master = await self.app._master()
        await master.create_task(self.name, kwargs=kwargs, delay=delay)

    async def send_at(self, eta: datetime.datetime, /, *args: P.args, **kwargs: P.kwargs) -> None:
        """Queue the task to run at ``eta`` (a timezone-aware datetime; one already
        past runs at once); return once the broker has confirmed it.

        Raises:
            TypeError: as :meth:`send`.
            ConfigurationError: a naive ``eta``, or one further than ``MAX_DELAY``.
            UnroutableError: no worker ever declared the task's queue.
        """
        self._check("send_at", args, kwargs)
        master = await self.app._master()
        await master.create_task(self.name, kwargs=kwargs, eta=eta)

    async def send_many(self, kwargs_list: Iterable[Mapping[str, Any]]) -> None:
        """Queue one task for each mapping of keyword arguments, in batches (see
        :meth:`Master.create_tasks`); return once the broker has confirmed every one.

        Raises:
            TypeError: one of them is not a mapping, or does not fit the function's
                signature (its index is named; nothing is sent).
            BatchPublishError: some were not taken by the broker (its ``failures``
                say which, by index, and why); the others were.
        """
        batch = []
        for index, kwargs in enumerate(kwargs_list):
            if not isinstance(kwargs, Mapping):
                raise TypeError(
                    f"{self.name}.send_many(): task {index} is {type(kwargs).__name__}, "
                    "not a mapping of keyword arguments"
                )
            kwargs = dict(kwargs)
            try:
                self._check("send_many", (), kwargs)
            except TypeError as exc:
                raise TypeError(f"task {index}: {exc}") from None
            batch.append(kwargs)
        master = await self.app._master()
        await master.create_tasks(self.name, batch)

    def __repr__(self) -> str:
        return f"<task {self.name!r} of {self.app!r}>"


class RPCHandle(_Handle, Generic[P, T, R]):
    """A remote method: call it to run the function here, ``await .call(...)`` to call it
    in whichever process serves it (``T`` is what the function returns, ``R`` what a
    remote call returns)."""

    func: Callable[P, T]

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> T:
        return self.func(*args, **kwargs)

    async def call(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call the method remotely (with the app's default timeout).

        Raises:
            TypeError: positional arguments, or keyword arguments that do not fit
                the function's signature (nothing is sent).
            TimeoutError, UnroutableError, RemoteError: see :meth:`RPC.call`.
        """
        self._check("call", args, kwargs)
        rpc = await self.app._rpc()
        result: R = await rpc.call(self.name, kwargs)
        return result

    def __repr__(self) -> str:
        return f"<rpc {self.name!r} of {self.app!r}>"


class _TaskDecorator(Protocol):
    def __call__(self, func: Callable[P, R], /) -> TaskHandle[P, R]: ...


class _RPCDecorator(Protocol):
    @overload
    def __call__(
        self, func: Callable[P, Coroutine[Any, Any, R]], /
    ) -> RPCHandle[P, Coroutine[Any, Any, R], R]: ...

    @overload
    def __call__(self, func: Callable[P, R], /) -> RPCHandle[P, R, R]: ...

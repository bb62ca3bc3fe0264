"""Calling user functions with keyword arguments that came over the wire."""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Collection
from typing import Any

from ..exceptions import ConfigurationError

#: Deliveries an ``async def`` worker or callee takes at once unless told: RabbitMQ
#: advises 100-300 for throughput; 256 keeps the broker streaming to a busy worker
#: while bounding what a crash requeues.
DEFAULT_PREFETCH = 256
#: ... and a plain function's (each runs in a thread of its own): asyncio's default
#: thread pool size.
DEFAULT_THREADS = min(32, (os.cpu_count() or 1) + 4)


def _listed(names: Collection[Any], limit: int = 10) -> str:
    """Some names, sorted and shortened: the reason goes into a log line and a header,
    and a task with 20,000 argument names (or one of a megabyte) must not make
    either unbounded (a header too big for one frame cannot be sent at all).
    """
    shown = [name if len(name) <= 60 else f"{name[:57]}..." for name in sorted(map(str, names))]
    more = f" and {len(shown) - limit} more" if len(shown) > limit else ""
    return ", ".join(shown[:limit]) + more


def _check_takes_keywords(
    name: str,
    func: Callable[..., Any],
    parameters: Collection[inspect.Parameter],
    keyword: Collection[Any],
    takes_any: bool,
) -> None:
    """Refuse a function that tasks and calls (keyword arguments only) cannot reach."""
    positional = [
        p.name
        for p in parameters
        if p.kind == inspect.Parameter.POSITIONAL_ONLY and p.default is p.empty
    ]
    if positional:
        raise ConfigurationError(
            f"{name!r}: {func!r} has positional-only parameters ({_listed(positional)}, "
            "before a /); tasks and calls pass keyword arguments only: make them keyword "
            "parameters (def f(*, x): ...)"
        )
    star_args = any(p.kind == inspect.Parameter.VAR_POSITIONAL for p in parameters)
    if star_args and not takes_any and not any(p.kind in keyword for p in parameters):
        raise ConfigurationError(
            f"{name!r}: {func!r} takes only positional arguments (*args); tasks and calls "
            "pass keyword arguments only: name its parameters (def f(*, x): ...)"
        )


class KeywordCall:
    """A user function called with keyword arguments from the wire.

    Checks the arguments against the signature before the call, so a task
    that does not fit is reported as such (and not confused with a TypeError
    raised inside the function). ``is_async`` tells an ``async def`` (run on the
    event loop) from a plain function (run in a thread: see :mod:`._threads`).

    Raises:
        ConfigurationError: ``func`` is not callable, or cannot take keyword
            arguments (a positional-only parameter without a default, or ``*args``
            and nothing else): every task or call would fail.
    """

    __slots__ = ("_known", "func", "is_async", "name", "optional", "required", "takes_any")

    def __init__(self, name: str, func: Callable[..., Any]) -> None:
        if not callable(func):
            raise ConfigurationError(f"{name!r}: {func!r} is not callable")
        self.name = name
        self.func = func
        target = func.func if isinstance(func, functools.partial) else func
        self.is_async = inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
            getattr(target, "__call__", None)  # noqa: B004 -- async __call__ objects
        )
        self.required: frozenset[str] = frozenset()
        self.optional: frozenset[str] = frozenset()
        self.takes_any = True
        self._known: frozenset[str] = frozenset()
        try:
            parameters = inspect.signature(func).parameters.values()
        except (TypeError, ValueError):
            return  # builtins without a signature: let the call decide
        keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        self.takes_any = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters)
        _check_takes_keywords(name, func, parameters, keyword, self.takes_any)
        self.required = frozenset(
            p.name for p in parameters if p.kind in keyword and p.default is p.empty
        )
        self.optional = frozenset(
            p.name for p in parameters if p.kind in keyword and p.default is not p.empty
        )
        self._known = self.required | self.optional

    @property
    def default_concurrency(self) -> int:
        """How many deliveries run at once unless told: :data:`DEFAULT_PREFETCH` for an
        ``async def``, :data:`DEFAULT_THREADS` for a plain function."""
        return DEFAULT_PREFETCH if self.is_async else DEFAULT_THREADS

    def check(self, kwargs: Any) -> str | None:
        """Why ``kwargs`` cannot be passed to the function, or ``None`` if they fit."""
        if not isinstance(kwargs, dict):
            return f"payload is {type(kwargs).__name__}, not an object of keyword arguments"
        names = kwargs.keys()
        # The common case in set operations done in C, before building any set.
        if self.required <= names and (self.takes_any or names <= self._known):
            return None
        missing = self.required - names
        unexpected = () if self.takes_any else names - self.required - self.optional
        if not (missing or unexpected):
            return None
        # Both, so that a misspelt name reads as the typo it is.
        problems = [
            f"{kind} argument{'s' if len(found) > 1 else ''} {_listed(found)}"
            for kind, found in (("missing", missing), ("unexpected", unexpected))
            if found
        ]
        return "; ".join(problems)

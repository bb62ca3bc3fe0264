"""What Master/Worker and RPC share: the Channel seam, proxies, the serialization
hooks with their accept-list, and calling user functions with keyword arguments.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime
import functools
import inspect
import json
import pickle
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any, Protocol, TypeVar

from ..amqp import Delivery, Properties, QueueDeclareOk, ReturnedMessage
from ..exceptions import ConfigurationError, SerializationError
from ..serializers import (
    COMPRESSED_JSON,
    JSON,
    PICKLE,
    CompressedJSONSerializer,
    JSONSerializer,
    ModuleSerializer,
    PickleSerializer,
    Serializer,
    get_serializer,
    media_type,
)

T = TypeVar("T")
#: What a task or RPC function is (aio-pika's name for it).
CallbackType = Callable[..., Awaitable[T]]


class PatternChannel(Protocol):
    """The seam: the only channel methods the patterns use.

    :class:`leveret.amqp.Channel` implements it; so does the in-memory channel
    of :mod:`leveret.testing`.
    """

    close_callbacks: list[Callable[[Any, BaseException | None], Any]]
    return_callbacks: list[Callable[[ReturnedMessage], Any]]

    @property
    def is_closed(self) -> bool:
        """Closed for good (a robust channel waiting to reopen is not)."""

    async def queue_declare(
        self,
        queue: str = "",
        *,
        passive: bool = False,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> QueueDeclareOk: ...

    async def publish(
        self,
        body: bytes,
        *,
        routing_key: str,
        exchange: str = "",
        mandatory: bool = False,
        properties: Properties | None = None,
        content_type: str | None = None,
        content_encoding: str | None = None,
        headers: Mapping[str, Any] | None = None,
        delivery_mode: int | None = None,
        priority: int | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        expiration: str | int | None = None,
        message_id: str | None = None,
        timestamp: int | float | None = None,
        type: str | None = None,
        user_id: str | None = None,
        app_id: str | None = None,
        confirm: bool = True,
    ) -> None: ...

    async def queue_delete(
        self, queue: str, *, if_unused: bool = False, if_empty: bool = False
    ) -> int: ...

    async def queue_bind(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        *,
        arguments: Mapping[str, Any] | None = None,
    ) -> None: ...

    async def exchange_declare(
        self,
        exchange: str,
        type: str = "direct",
        *,
        passive: bool = False,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: Mapping[str, Any] | None = None,
    ) -> None: ...

    async def consume(
        self,
        queue: str,
        callback: Callable[[Delivery], Awaitable[Any] | None],
        *,
        no_ack: bool = False,
        exclusive: bool = False,
        prefetch_count: int | None = None,
    ) -> str: ...

    async def cancel(self, consumer_tag: str) -> None: ...


class GetChannel(PatternChannel, Protocol):
    """The seam plus ``basic.get``, for the dead-letter tools."""

    async def get(self, queue: str, *, no_ack: bool = False) -> Delivery | None: ...


class Method:
    """``proxy.a.b`` is the method ``"a.b"``; calling it calls ``func("a.b", kwargs=...)``."""

    __slots__ = ("_func", "_name")

    def __init__(self, name: str, func: Callable[..., Awaitable[Any]]) -> None:
        self._name = name
        self._func = func

    def __getattr__(self, item: str) -> Method:
        return Method(f"{self._name}.{item}", self._func)

    def __call__(self, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        if args:
            raise TypeError(
                f"{self._name}() takes keyword arguments only; "
                f"got {len(args)} positional argument{'s' if len(args) > 1 else ''}"
            )
        return self._func(self._name, kwargs=kwargs)

    def __repr__(self) -> str:
        return f"<proxy method {self._name!r}>"


class Proxy:
    """Attribute access names a task or remote method: ``proxy.reports.build(x=1)``."""

    __slots__ = ("_func",)

    def __init__(self, func: Callable[..., Awaitable[Any]]) -> None:
        self._func = func

    def __getattr__(self, item: str) -> Method:
        return Method(item, self._func)


class Base:
    """Serialization shared by :class:`Master` and :class:`RPC`.

    Change the format by passing ``serializer=`` (``"json"``, ``"compressed-json"``,
    ``"msgpack"``, ``"pickle"`` or a :class:`~leveret.serializers.Serializer`), or by
    subclassing as with aio-pika: set ``CONTENT_TYPE`` and either ``SERIALIZER`` (a
    module with ``dumps``/``loads``, such as ``msgpack``) or override
    :meth:`serialize` and :meth:`deserialize`. Incoming messages are decoded only if
    their content type is ``CONTENT_TYPE`` or listed in ``accept=``; a message without
    a content type counts as ``CONTENT_TYPE``, except that pickle is only ever decoded
    from a message that says it is pickle.

    Unlike aio-pika's ``Base`` (pickle), the default is JSON: pickle runs code while
    it loads, so it must be chosen.
    """

    CONTENT_TYPE: str = JSON
    #: aio-pika's hook: a module with ``dumps``/``loads`` used by the default
    #: :meth:`serialize`/:meth:`deserialize`. ``None``: the serializer built in for
    #: ``CONTENT_TYPE``.
    SERIALIZER: Any = None

    def __init__(
        self,
        *,
        serializer: str | Serializer | None = None,
        accept: Collection[str] = (),
    ) -> None:
        own: Serializer | None
        if serializer is not None:
            own = get_serializer(serializer)
            self.CONTENT_TYPE = own.content_type
        elif type(self).serialize is Base.serialize or type(self).deserialize is Base.deserialize:
            own = self._class_serializer()
        else:
            own = None
        self._serializer: Serializer = own or JSONSerializer()
        self._accept: dict[str, Serializer] = {
            content_type: get_serializer(content_type)
            for content_type in accept
            if content_type != self.CONTENT_TYPE
        }

    def _class_serializer(self) -> Serializer:
        """The serializer the class asks for with ``SERIALIZER`` and ``CONTENT_TYPE``.

        Raises:
            ConfigurationError: neither names one leveret has, and the class does
                not override :meth:`serialize` and :meth:`deserialize`.
        """
        module = self.SERIALIZER
        if module is json and media_type(self.CONTENT_TYPE) == JSON:
            return JSONSerializer()
        if module is pickle and self.CONTENT_TYPE == PICKLE:
            return PickleSerializer()
        if module is not None:
            return ModuleSerializer(module, self.CONTENT_TYPE)
        try:
            return get_serializer(self.CONTENT_TYPE)
        except ConfigurationError:
            raise ConfigurationError(
                f"{type(self).__name__}.CONTENT_TYPE is {self.CONTENT_TYPE!r}, which has no "
                "built-in serializer: set SERIALIZER, or override serialize() and deserialize()"
            ) from None

    def serialize(self, data: Any) -> bytes:
        """Encode a payload (kwargs, a result, an error) as ``CONTENT_TYPE``."""
        return self._serializer.dumps(data)

    def deserialize(self, data: bytes) -> Any:
        """Decode a body of ``CONTENT_TYPE``."""
        return self._serializer.loads(data)

    @property
    def accepted_content_types(self) -> tuple[str, ...]:
        return (self.CONTENT_TYPE, *self._accept)

    def _encode(self, data: Any) -> bytes:
        try:
            return self.serialize(data)
        except SerializationError:
            raise
        except Exception as exc:
            raise SerializationError(f"cannot encode as {self.CONTENT_TYPE}: {exc}") from exc

    def _decode(self, delivery: Delivery) -> Any:
        """Decode a delivery's body if its content type is accepted.

        Raises:
            SerializationError: the content type is not accepted, or the body
                does not decode; the message says which.
        """
        content_type = delivery.properties.content_type
        media = media_type(content_type)
        try:
            if media == self.CONTENT_TYPE or (content_type is None and self.CONTENT_TYPE != PICKLE):
                return self.deserialize(delivery.body)
            serializer = self._accept.get(media or "")
            if serializer is not None:
                return serializer.loads(delivery.body)
        except Exception as exc:
            raise SerializationError(
                f"body does not decode as {content_type or self.CONTENT_TYPE}: {exc}"
            ) from None
        accepted = ", ".join(self.accepted_content_types)
        raise SerializationError(
            f"content type {content_type!r} is not accepted (accepts {accepted})"
        )


class CompressedJson(Base):
    """gzip-compressed JSON, as aio-pika's ``CompressedJsonMaster`` sends it: mixed into
    :class:`CompressedJsonMaster` and :class:`CompressedJsonRPC`. ``COMPRESS_LEVEL``
    (0-9) trades CPU for size, as in aio-pika."""

    CONTENT_TYPE = COMPRESSED_JSON
    SERIALIZER = json
    COMPRESS_LEVEL = 6

    def _class_serializer(self) -> Serializer:
        return CompressedJSONSerializer(level=self.COMPRESS_LEVEL)


#: A duration as aio-pika takes it: seconds, a timedelta, or a datetime (until then).
Duration = float | datetime.timedelta | datetime.datetime


def milliseconds(value: Duration, *, minimum: int = 0) -> int:
    """``value`` in whole milliseconds, at least ``minimum`` (a time already past is 0).

    Raises:
        ConfigurationError: not a number, timedelta or datetime.
    """
    if isinstance(value, datetime.datetime):
        seconds = (value - datetime.datetime.now(value.tzinfo)).total_seconds()
    elif isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = value
    else:
        raise ConfigurationError(f"expiration {value!r} is not seconds, a timedelta or a datetime")
    return max(minimum, round(seconds * 1000))


def _listed(names: Collection[Any], limit: int = 10) -> str:
    """Some names, sorted and shortened: the reason goes into a log line and a header,
    and a task with 20,000 argument names (or one of a megabyte) must not make
    either unbounded (a header too big for one frame cannot be sent at all).
    """
    shown = [name if len(name) <= 60 else f"{name[:57]}..." for name in sorted(map(str, names))]
    more = f" and {len(shown) - limit} more" if len(shown) > limit else ""
    return ", ".join(shown[:limit]) + more


def is_quorum(
    queue: str, queue_type: str, *, durable: bool, exclusive: bool, auto_delete: bool
) -> bool:
    """Whether ``queue_type`` asks for a quorum queue (``"quorum"``) or not (``"classic"``).

    Raises:
        ConfigurationError: another type, or a quorum queue asked to be
            non-durable, exclusive or auto-delete.
    """
    if queue_type == "quorum":
        if exclusive or auto_delete or not durable:
            raise ConfigurationError(
                f"queue {queue!r}: a quorum queue is durable, never exclusive or auto-delete"
            )
        return True
    if queue_type != "classic":
        raise ConfigurationError(f"queue_type={queue_type!r} is not 'classic' or 'quorum'")
    return False


class KeywordCall:
    """A user function called with keyword arguments from the wire.

    Checks the arguments against the signature before the call, so a task
    that does not fit is reported as such (and not confused with a TypeError
    raised inside the function). Plain functions run in the loop's default
    thread pool, never on the event loop.
    """

    __slots__ = ("func", "is_async", "name", "optional", "required", "takes_any")

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
        try:
            parameters = inspect.signature(func).parameters.values()
        except (TypeError, ValueError):
            return  # builtins without a signature: let the call decide
        keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        self.takes_any = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters)
        self.required = frozenset(
            p.name for p in parameters if p.kind in keyword and p.default is p.empty
        )
        self.optional = frozenset(
            p.name for p in parameters if p.kind in keyword and p.default is not p.empty
        )

    def check(self, kwargs: Any) -> str | None:
        """Why ``kwargs`` cannot be passed to the function, or ``None`` if they fit."""
        if not isinstance(kwargs, dict):
            return f"payload is {type(kwargs).__name__}, not an object of keyword arguments"
        names = kwargs.keys()
        missing = self.required - names
        if missing:
            return f"missing argument{'s' if len(missing) > 1 else ''} {_listed(missing)}"
        if not self.takes_any:
            unexpected = names - self.required - self.optional
            if unexpected:
                return (
                    f"unexpected argument{'s' if len(unexpected) > 1 else ''} {_listed(unexpected)}"
                )
        return None

    async def __call__(self, kwargs: dict[str, Any]) -> Any:
        if self.is_async:
            return await self.func(**kwargs)
        loop = asyncio.get_running_loop()
        # The thread sees the caller's context variables (current_task() works there).
        run = functools.partial(contextvars.copy_context().run, self.func, **kwargs)
        result = await loop.run_in_executor(None, run)
        if inspect.isawaitable(result):  # a plain function that hands back a coroutine
            result = await result
        return result

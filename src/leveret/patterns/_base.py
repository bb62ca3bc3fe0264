"""What Master and RPC share, as aio-pika's ``patterns.base`` has it: proxies and the
serialization hooks with their accept-list.
"""

from __future__ import annotations

import datetime
import json
import pickle
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any, TypeVar

from ..amqp import Delivery
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
        # What _encode and _decode call: the serializer itself unless a subclass
        # overrides serialize() or deserialize() (one Python call less per message).
        cls = type(self)
        self._dumps = self._serializer.dumps if cls.serialize is Base.serialize else self.serialize
        self._loads = (
            self._serializer.loads if cls.deserialize is Base.deserialize else self.deserialize
        )
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
        """``serialize(data)``.

        Raises:
            SerializationError: it cannot be encoded; for a mapping (a task's or a
                call's arguments, a result), the message starts with the key whose
                value does not encode.
        """
        try:
            return self._dumps(data)
        except Exception as exc:
            message = (
                str(exc)
                if isinstance(exc, SerializationError)
                else f"cannot encode as {self.CONTENT_TYPE}: {exc}"
            )
            culprit = self._culprit(data)
            if culprit is None and isinstance(exc, SerializationError):
                raise
            where = "" if culprit is None else f"{culprit}: "
            raise SerializationError(f"{where}{message}") from exc

    def _culprit(self, data: Any) -> str | None:
        """``"'key' (a type)"``: the first value of a mapping that does not encode on its
        own (the failure path only: it encodes each value again)."""
        if isinstance(data, dict):
            for key, value in data.items():
                try:
                    self.serialize({key: value})
                except Exception:
                    return f"{key!r} (a {type(value).__name__})"
        return None

    def _decode(self, delivery: Delivery) -> Any:
        """Decode a delivery's body if its content type is accepted.

        Raises:
            SerializationError: the content type is not accepted, or the body
                does not decode; the message says which.
        """
        content_type = delivery.properties.content_type
        loads = self._loads
        if content_type != self.CONTENT_TYPE:  # the common case needs no parsing
            media = media_type(content_type)
            if media != self.CONTENT_TYPE and (
                content_type is not None or self.CONTENT_TYPE == PICKLE
            ):
                serializer = self._accept.get(media or "")
                if serializer is None:
                    accepted = ", ".join(self.accepted_content_types)
                    raise SerializationError(
                        f"content type {content_type!r} is not accepted (accepts {accepted})"
                    )
                loads = serializer.loads
        try:
            return loads(delivery.body)
        except Exception as exc:
            raise SerializationError(
                f"body does not decode as {content_type or self.CONTENT_TYPE}: {exc}"
            ) from None


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


def keyword_arguments(kwargs: object, call: str) -> dict[str, Any]:
    """``kwargs`` as the dict of keyword arguments it must be.

    Raises:
        ConfigurationError: it is not a mapping (``call`` says whose).
    """
    if not isinstance(kwargs, Mapping):
        raise ConfigurationError(
            f"{call}: kwargs must be a mapping of keyword arguments "
            f"(kwargs={{'name': value}}), not {kwargs.__class__.__name__}"
        )
    return dict(kwargs)


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

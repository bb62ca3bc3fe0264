"""Payload serializers and the content types they answer to.

JSON is the default everywhere. msgpack needs the optional extra
(``pip install 'leveret[msgpack]'``). Pickle executes code while it loads, so
it is used only when chosen explicitly, and a receiver decodes only content
types on its accept-list: a pickle body sent to a JSON worker is rejected,
never unpickled.
"""

from __future__ import annotations

import json
import pickle
from typing import Any, ClassVar

from .exceptions import ConfigurationError, SerializationError

JSON = "application/json"
MSGPACK = "application/msgpack"
PICKLE = "application/python-pickle"


class Serializer:
    """Turns payloads into bytes and back for one content type."""

    content_type: ClassVar[str]

    def dumps(self, data: Any) -> bytes:
        raise NotImplementedError

    def loads(self, data: bytes) -> Any:
        raise NotImplementedError


class JSONSerializer(Serializer):
    """UTF-8 JSON, compact, non-ASCII kept as is (as aio-pika's JsonMaster writes it)."""

    content_type = JSON
    _encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))

    def dumps(self, data: Any) -> bytes:
        try:
            return self._encoder.encode(data).encode()
        except (TypeError, ValueError) as exc:
            raise SerializationError(f"cannot encode as JSON: {exc}") from None

    def loads(self, data: bytes) -> Any:
        try:
            text = data.decode()  # json.loads(bytes) would first guess the encoding
        except UnicodeDecodeError:
            return json.loads(data)  # UTF-16/32 JSON, or not JSON at all: let json say
        return json.loads(text)


class MsgpackSerializer(Serializer):
    """msgpack (``pip install 'leveret[msgpack]'``)."""

    content_type = MSGPACK

    def __init__(self) -> None:
        try:
            import msgpack  # type: ignore[import-untyped,unused-ignore]
        except ImportError:
            raise ConfigurationError(
                "msgpack is not installed: pip install 'leveret[msgpack]'"
            ) from None
        self._msgpack = msgpack

    def dumps(self, data: Any) -> bytes:
        try:
            result: bytes = self._msgpack.packb(data)
        except (TypeError, ValueError) as exc:
            raise SerializationError(f"cannot encode as msgpack: {exc}") from None
        return result

    def loads(self, data: bytes) -> Any:
        return self._msgpack.unpackb(data)


class PickleSerializer(Serializer):
    """Python pickle. Loading a pickle runs code: only for trusted peers."""

    content_type = PICKLE

    def dumps(self, data: Any) -> bytes:
        try:
            return pickle.dumps(data)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise SerializationError(f"cannot pickle: {exc}") from None

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)  # only on receivers that opted into pickle


def media_type(content_type: str | None) -> str | None:
    """The content type to match against an accept-list.

    Media types are case-insensitive and a ``charset=utf-8`` parameter changes
    nothing for these formats: ``"Application/JSON; charset=UTF-8"`` is
    ``"application/json"``. Any other parameter (``compression=gzip``) names a
    different encoding and is kept, so it does not match.
    """
    if content_type is None:
        return None
    base, _, parameters = content_type.partition(";")
    normalized = base.strip().lower()
    for parameter in parameters.split(";"):
        name, _, value = parameter.strip().partition("=")
        if parameter.strip() and not (
            name.strip().lower() == "charset" and value.strip().strip('"').lower() == "utf-8"
        ):
            return content_type.strip().lower()
    return normalized


_BY_NAME: dict[str, type[Serializer]] = {
    "json": JSONSerializer,
    JSON: JSONSerializer,
    "msgpack": MsgpackSerializer,
    MSGPACK: MsgpackSerializer,
    "pickle": PickleSerializer,
    PICKLE: PickleSerializer,
}


def get_serializer(which: str | Serializer) -> Serializer:
    """A serializer by name (``"json"``, ``"msgpack"``, ``"pickle"``), by content type,
    or the given instance itself.

    Raises:
        ConfigurationError: unknown name, or msgpack is not installed.
    """
    if isinstance(which, Serializer):
        return which
    cls = _BY_NAME.get(which)
    if cls is None:
        raise ConfigurationError(
            f"no serializer for {which!r}: use 'json', 'msgpack', 'pickle' or a Serializer"
        )
    return cls()


__all__ = [
    "JSON",
    "MSGPACK",
    "PICKLE",
    "JSONSerializer",
    "MsgpackSerializer",
    "PickleSerializer",
    "Serializer",
    "get_serializer",
    "media_type",
]

"""Payload serializers and the content types they answer to.

JSON is the default everywhere, encoded and decoded by orjson when it is
installed (``pip install 'leveret[speed]'``), by the standard library's ``json``
otherwise: the same content type, and bodies either side (or aio-pika) reads.
msgpack needs the optional extra (``pip install 'leveret[msgpack]'``). Pickle
executes code while it loads, so it is used only when chosen explicitly, and a
receiver decodes only content types on its accept-list: a pickle body sent to a
JSON worker is rejected, never unpickled.
"""

from __future__ import annotations

import functools
import json
import pickle
import re
import zlib
from collections.abc import Callable
from typing import Any, ClassVar

from .exceptions import ConfigurationError, SerializationError

try:
    import orjson as _orjson
except ImportError:  # the speed extra is optional: stock json does it all
    _orjson = None  # type: ignore[assignment]

JSON = "application/json"
#: gzip-compressed JSON, as aio-pika's ``CompressedJsonMaster`` writes it.
COMPRESSED_JSON = "application/json;compression=gzip"
MSGPACK = "application/msgpack"
PICKLE = "application/python-pickle"


class Serializer:
    """Turns payloads into bytes and back for one content type."""

    content_type: ClassVar[str]

    def dumps(self, data: Any) -> bytes:
        raise NotImplementedError

    def loads(self, data: bytes) -> Any:
        raise NotImplementedError


#: orjson hands these to stock json (it raises TypeError for them): datetimes,
#: dataclasses and subclasses of str, int, dict and list, which stock json
#: refuses, encodes through ``default`` or encodes its own way.
_ORJSON_OPTIONS = (
    0
    if _orjson is None
    else _orjson.OPT_PASSTHROUGH_DATETIME
    | _orjson.OPT_PASSTHROUGH_DATACLASS
    | _orjson.OPT_PASSTHROUGH_SUBCLASS
)
#: A number of 19 digits or more may not fit 64 bits, which orjson decodes as a
#: float (losing digits) where stock json keeps an exact int.
_LONG_NUMBER = re.compile(rb"\d{19}")


class JSONSerializer(Serializer):
    """UTF-8 JSON, compact, non-ASCII kept as is (as aio-pika's JsonMaster writes it).

    ``default`` is called for objects JSON cannot encode (aio-pika's ``JsonRPC``
    passes ``repr``); without it they raise :class:`SerializationError`.

    ``fast``: whether orjson does the work; by default, when it is installed
    (``pip install 'leveret[speed]'``). The payloads either way are the same
    values: whatever orjson refuses or would write or read differently from
    stock json (NaN and infinity, integers beyond 64 bits, non-string keys,
    objects for ``default``, bodies that are not UTF-8) is left to stock json.
    One difference remains: orjson encodes ``uuid.UUID`` and ``enum.Enum``
    values (as their string and value), which stock json refuses.

    Raises:
        ConfigurationError: ``fast=True`` and orjson is not installed.
    """

    content_type = JSON
    _encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))

    def __init__(
        self, *, default: Callable[[Any], Any] | None = None, fast: bool | None = None
    ) -> None:
        if fast and _orjson is None:
            raise ConfigurationError("orjson is not installed: pip install 'leveret[speed]'")
        self._orjson = _orjson if fast is not False else None
        if default is not None:
            self._encoder = json.JSONEncoder(
                ensure_ascii=False, separators=(",", ":"), default=default
            )

    @property
    def fast(self) -> bool:
        """Whether orjson encodes and decodes (see the class)."""
        return self._orjson is not None

    def dumps(self, data: Any) -> bytes:
        fast = self._orjson
        if fast is not None:
            try:
                encoded: bytes = fast.dumps(data, option=_ORJSON_OPTIONS)
            except TypeError:
                pass  # refused by orjson (see the class): stock json decides
            else:
                # orjson writes NaN and infinity as null, stock json as NaN and Infinity
                # (which it and aio-pika read back): a body with null is written by json.
                if b"null" not in encoded:
                    return encoded
        try:
            return self._encoder.encode(data).encode()
        except (TypeError, ValueError) as exc:
            raise SerializationError(f"cannot encode as JSON: {exc}") from None

    def loads(self, data: bytes) -> Any:
        fast = self._orjson
        if fast is not None and _LONG_NUMBER.search(data) is None:
            try:
                return fast.loads(data)
            except fast.JSONDecodeError:
                pass  # NaN, a lone surrogate, not UTF-8, too deep: as stock json reads it
        try:
            text = data.decode()  # json.loads(bytes) would first guess the encoding
        except UnicodeDecodeError:
            return json.loads(data)  # UTF-16/32 JSON, or not JSON at all: let json say
        return json.loads(text)


class CompressedJSONSerializer(JSONSerializer):
    """gzip-compressed UTF-8 JSON (``application/json;compression=gzip``), wire-compatible
    with aio-pika's ``CompressedJsonMaster``.

    A body that would inflate past ``max_size`` bytes is refused rather than
    inflated: a few kilobytes of gzip can otherwise claim gigabytes of memory.
    """

    content_type = COMPRESSED_JSON
    #: RabbitMQ's default ``max_message_size``; nothing larger can have been sent plain.
    MAX_SIZE = 128 * 1024 * 1024

    def __init__(self, *, level: int = 6, max_size: int = MAX_SIZE) -> None:
        super().__init__()
        if not 0 <= level <= 9:
            raise ConfigurationError(f"compression level {level} is outside 0..9")
        self.level = level
        self.max_size = max_size

    def dumps(self, data: Any) -> bytes:
        # wbits=31: a gzip member with header and trailer, as gzip.compress() writes.
        compressor = zlib.compressobj(self.level, zlib.DEFLATED, 31)
        return compressor.compress(super().dumps(data)) + compressor.flush()

    def loads(self, data: bytes) -> Any:
        inflater = zlib.decompressobj(47)  # 32 + 15: gzip or zlib, detected from the header
        try:
            plain = inflater.decompress(data, self.max_size)
        except zlib.error as exc:
            raise SerializationError(f"body is not gzip: {exc}") from None
        if inflater.unconsumed_tail:
            raise SerializationError(
                f"body inflates past {self.max_size} bytes; refused (raise max_size to accept it)"
            )
        return super().loads(plain)


class ModuleSerializer(Serializer):
    """A serializer from any object with ``dumps``/``loads`` (``json``, ``msgpack``, ``orjson``,
    ...), for subclasses that set ``SERIALIZER`` as with aio-pika. ``dumps`` may return
    ``str`` (encoded as UTF-8) or bytes.
    """

    def __init__(self, module: Any, content_type: str) -> None:
        if not (
            callable(getattr(module, "dumps", None)) and callable(getattr(module, "loads", None))
        ):
            raise ConfigurationError(
                f"SERIALIZER {module!r} has no dumps() and loads(): set a module such as json "
                "or msgpack, or override serialize() and deserialize()"
            )
        self.module = module
        self.content_type = content_type  # type: ignore[misc]  # per instance here

    def dumps(self, data: Any) -> bytes:
        try:
            result = self.module.dumps(data)
        except Exception as exc:
            raise SerializationError(f"cannot encode as {self.content_type}: {exc}") from None
        return result.encode() if isinstance(result, str) else bytes(result)

    def loads(self, data: bytes) -> Any:
        return self.module.loads(data)


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


@functools.lru_cache(maxsize=256)  # parsed once per content type, not once per delivery
def media_type(content_type: str | None) -> str | None:
    """The content type to match against an accept-list.

    Media types are case-insensitive and a ``charset=utf-8`` parameter changes
    nothing for these formats: ``"Application/JSON; charset=UTF-8"`` is
    ``"application/json"``. Any other parameter (``compression=gzip``) names a
    different encoding and is kept, spaces removed, so it does not match the
    bare type: ``"application/json; compression=gzip"`` is
    ``"application/json;compression=gzip"``.
    """
    if content_type is None:
        return None
    base, _, parameters = content_type.partition(";")
    normalized = base.strip().lower()
    for parameter in parameters.split(";"):
        name, _, value = parameter.strip().partition("=")
        name, value = name.strip().lower(), value.strip().strip('"').lower()
        if name and not (name == "charset" and value == "utf-8"):
            normalized += f";{name}={value}"
    return normalized


_BY_NAME: dict[str, type[Serializer]] = {
    "json": JSONSerializer,
    JSON: JSONSerializer,
    "compressed-json": CompressedJSONSerializer,
    COMPRESSED_JSON: CompressedJSONSerializer,
    "msgpack": MsgpackSerializer,
    MSGPACK: MsgpackSerializer,
    "pickle": PickleSerializer,
    PICKLE: PickleSerializer,
}


def get_serializer(which: str | Serializer) -> Serializer:
    """A serializer by name (``"json"``, ``"compressed-json"``, ``"msgpack"``, ``"pickle"``),
    by content type, or the given instance itself.

    Raises:
        ConfigurationError: unknown name, or msgpack is not installed.
    """
    if isinstance(which, Serializer):
        return which
    cls = _BY_NAME.get(media_type(which) or "") or _BY_NAME.get(which)
    if cls is None:
        raise ConfigurationError(
            f"no serializer for {which!r}: use 'json', 'compressed-json', 'msgpack', 'pickle' "
            "or a Serializer"
        )
    return cls()


__all__ = [
    "COMPRESSED_JSON",
    "JSON",
    "MSGPACK",
    "PICKLE",
    "CompressedJSONSerializer",
    "JSONSerializer",
    "ModuleSerializer",
    "MsgpackSerializer",
    "PickleSerializer",
    "Serializer",
    "get_serializer",
    "media_type",
]

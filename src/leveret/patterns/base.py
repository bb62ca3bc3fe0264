"""aio-pika's ``aio_pika.patterns.base``: the serialization hooks both patterns share.

Subclass :class:`Master` or :class:`RPC` (they derive from :class:`Base`) and set
``CONTENT_TYPE`` with ``SERIALIZER``, or override ``serialize``/``deserialize``.
"""

from ._base import Base, CallbackType, Method, Proxy

__all__ = ["Base", "CallbackType", "Method", "Proxy"]

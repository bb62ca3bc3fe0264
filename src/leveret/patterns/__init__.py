"""The Master/Worker and RPC patterns (the API of aio-pika's ``aio_pika.patterns``).

Built on the :class:`PatternChannel` seam; JSON by default, other formats by
``serializer=`` or by subclassing (``CONTENT_TYPE``, ``serialize``, ``deserialize``).
"""

from ..exceptions import CallInterruptedError, RemoteError, UnroutableError
from ._base import Base, KeywordCall, PatternChannel, Proxy
from ._master import (
    DEFAULT_PREFETCH,
    Master,
    MessageProcessingError,
    NackMessage,
    RejectMessage,
    Worker,
)
from ._rpc import DEADLINE_HEADER, REPLY_TO, RPC

__all__ = [
    "DEADLINE_HEADER",
    "DEFAULT_PREFETCH",
    "REPLY_TO",
    "RPC",
    "Base",
    "CallInterruptedError",
    "KeywordCall",
    "Master",
    "MessageProcessingError",
    "NackMessage",
    "PatternChannel",
    "Proxy",
    "RejectMessage",
    "RemoteError",
    "UnroutableError",
    "Worker",
]

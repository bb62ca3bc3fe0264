"""The Master/Worker and RPC patterns (the API of aio-pika's ``aio_pika.patterns``).

Built on the :class:`PatternChannel` seam; JSON by default, other formats by
``serializer=`` or by subclassing (``CONTENT_TYPE`` with ``SERIALIZER``, or
``serialize`` and ``deserialize``). aio-pika's module paths work too:
:mod:`leveret.patterns.master`, :mod:`leveret.patterns.rpc` and
:mod:`leveret.patterns.base`.
"""

from ..exceptions import CallInterruptedError, RemoteError, UnroutableError
from ._base import Base, KeywordCall, PatternChannel, Proxy
from ._deadletters import DeadLetter, list_dead_letters, replay_dead_letters
from ._master import DEFAULT_PREFETCH, CompressedJsonMaster, JsonMaster, Master
from ._retry import RetryPolicy, TaskInfo, current_task, dead_letter_queue, retry_queue
from ._rpc import DEADLINE_HEADER, REPLY_TO, RPC, CompressedJsonRPC, JsonRPC, RPCMessageType
from ._serve import serve
from ._worker import MessageProcessingError, NackMessage, RejectMessage, Worker

__all__ = [
    "DEADLINE_HEADER",
    "DEFAULT_PREFETCH",
    "REPLY_TO",
    "RPC",
    "Base",
    "CallInterruptedError",
    "CompressedJsonMaster",
    "CompressedJsonRPC",
    "DeadLetter",
    "JsonMaster",
    "JsonRPC",
    "KeywordCall",
    "Master",
    "MessageProcessingError",
    "NackMessage",
    "PatternChannel",
    "Proxy",
    "RPCMessageType",
    "RejectMessage",
    "RemoteError",
    "RetryPolicy",
    "TaskInfo",
    "UnroutableError",
    "Worker",
    "current_task",
    "dead_letter_queue",
    "list_dead_letters",
    "replay_dead_letters",
    "retry_queue",
    "serve",
]

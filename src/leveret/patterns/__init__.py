"""The Master/Worker and RPC patterns (the API of aio-pika's ``aio_pika.patterns``).

Built on the :class:`PatternChannel` seam; JSON by default, other formats by
``serializer=`` or by subclassing (``CONTENT_TYPE`` with ``SERIALIZER``, or
``serialize`` and ``deserialize``). aio-pika's module paths work too:
:mod:`leveret.patterns.master`, :mod:`leveret.patterns.rpc` and
:mod:`leveret.patterns.base`.
"""

from ..exceptions import (
    CallInterruptedError,
    CallRedeliveredError,
    MessageProcessingError,
    NackMessage,
    NoCurrentTaskError,
    RejectMessage,
    RemoteError,
    UnroutableError,
)
from ._base import Base, Proxy
from ._call import DEFAULT_PREFETCH, DEFAULT_THREADS, KeywordCall
from ._callee import DEADLINE_HEADER, Callee
from ._cancel import (
    CANCELLED_REASON,
    CONTROL_EXCHANGE,
    REVOKED_MAX_LENGTH,
    REVOKED_TTL,
    Revocations,
    cancel_routing_key,
    load_revocations,
    parse_revocation,
    publish_revocation,
    revocations,
    revoked_queue,
)
from ._deadletters import DeadLetter, list_dead_letters, replay_dead_letters
from ._master import CompressedJsonMaster, JsonMaster, Master
from ._observe import (
    OUTCOMES,
    Kind,
    Observer,
    Observers,
    Outcome,
    add_observer,
    default_observers,
    remove_observer,
)
from ._retry import (
    ATTEMPT_HEADER,
    RetryPolicy,
    TaskInfo,
    current_task,
    dead_letter_queue,
    parked_queue,
    retry_queue,
)
from ._rpc import REPLY_TO, RPC, CompressedJsonRPC, JsonRPC, RPCMessageType
from ._seam import GetChannel, PatternChannel, QueueType
from ._serve import Closable, ServeHook, serve, serve_hooks
from ._worker import Worker

__all__ = [
    "ATTEMPT_HEADER",
    "CANCELLED_REASON",
    "CONTROL_EXCHANGE",
    "DEADLINE_HEADER",
    "DEFAULT_PREFETCH",
    "DEFAULT_THREADS",
    "OUTCOMES",
    "REPLY_TO",
    "REVOKED_MAX_LENGTH",
    "REVOKED_TTL",
    "RPC",
    "Base",
    "CallInterruptedError",
    "CallRedeliveredError",
    "Callee",
    "Closable",
    "CompressedJsonMaster",
    "CompressedJsonRPC",
    "DeadLetter",
    "GetChannel",
    "JsonMaster",
    "JsonRPC",
    "KeywordCall",
    "Kind",
    "Master",
    "MessageProcessingError",
    "NackMessage",
    "NoCurrentTaskError",
    "Observer",
    "Observers",
    "Outcome",
    "PatternChannel",
    "Proxy",
    "QueueType",
    "RPCMessageType",
    "RejectMessage",
    "RemoteError",
    "RetryPolicy",
    "Revocations",
    "ServeHook",
    "TaskInfo",
    "UnroutableError",
    "Worker",
    "add_observer",
    "cancel_routing_key",
    "current_task",
    "dead_letter_queue",
    "default_observers",
    "list_dead_letters",
    "load_revocations",
    "parked_queue",
    "parse_revocation",
    "publish_revocation",
    "remove_observer",
    "replay_dead_letters",
    "retry_queue",
    "revocations",
    "revoked_queue",
    "serve",
    "serve_hooks",
]

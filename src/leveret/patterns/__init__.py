"""The Master/Worker and RPC patterns (the API of aio-pika's ``aio_pika.patterns``).

Built on the :class:`PatternChannel` seam; JSON by default, other formats by
``serializer=`` or by subclassing (``CONTENT_TYPE`` with ``SERIALIZER``, or
``serialize`` and ``deserialize``). aio-pika's module paths work too:
:mod:`leveret.patterns.master`, :mod:`leveret.patterns.rpc` and
:mod:`leveret.patterns.base`.
"""

from ..exceptions import (
    BatchPublishError,
    CallInterruptedError,
    CallRedeliveredError,
    MessageProcessingError,
    NackMessage,
    NoCalleeError,
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
from ._delay import MAX_DELAY, UNDELIVERABLE, delay_queues
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
)
from ._rpc import REPLY_TO, RPC, CompressedJsonRPC, JsonRPC, RPCMessageType
from ._schedule import Schedule, ScheduledTask
from ._scheduler import Scheduler, read_last_fired, read_token, scheduler_queue
from ._seam import GetChannel, PatternChannel, QueueType, TxChannel
from ._serve import Closable, ServeHook, serve, serve_hooks
from ._worker import Worker

__all__ = [
    "ATTEMPT_HEADER",
    "CANCELLED_REASON",
    "CONTROL_EXCHANGE",
    "DEADLINE_HEADER",
    "DEFAULT_PREFETCH",
    "DEFAULT_THREADS",
    "MAX_DELAY",
    "OUTCOMES",
    "REPLY_TO",
    "REVOKED_MAX_LENGTH",
    "REVOKED_TTL",
    "RPC",
    "UNDELIVERABLE",
    "Base",
    "BatchPublishError",
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
    "NoCalleeError",
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
    "Schedule",
    "ScheduledTask",
    "Scheduler",
    "ServeHook",
    "TaskInfo",
    "TxChannel",
    "UnroutableError",
    "Worker",
    "add_observer",
    "cancel_routing_key",
    "current_task",
    "dead_letter_queue",
    "default_observers",
    "delay_queues",
    "list_dead_letters",
    "load_revocations",
    "parked_queue",
    "parse_revocation",
    "publish_revocation",
    "read_last_fired",
    "read_token",
    "remove_observer",
    "replay_dead_letters",
    "revocations",
    "revoked_queue",
    "scheduler_queue",
    "serve",
    "serve_hooks",
]

"""leveret's own AMQP 0-9-1 client for asyncio.

It knows nothing of the patterns built on it. The hot path (publish, deliver,
ack, confirms) is parsed and packed by hand; frames are read from one buffer in
``data_received`` and writes are batched per event-loop turn.

Besides the client (:func:`connect`, :func:`connect_robust`, :class:`Channel`
...), this package exports what another broker's channel shares to behave the
same for its users, as the in-memory broker of :mod:`leveret.testing` does:
:class:`Delivery` settles through a :class:`Settler`; the channel methods
:class:`Declarations` (declare, bind, delete ...) and :class:`Consuming`
(``consume``, ``iterate``) are written once over a channel's ``_declare`` and
``_consume``; :class:`Consumer`, :class:`DeliveryIterator`, :func:`notify_cancel`
and the confirm and return rules (:func:`resolve_confirm`,
:func:`publish_not_confirmed`, :func:`dispatch_return`) are shared by both, with
:class:`TaskOwner` and the field codec (:func:`encode_table`, :func:`decode_table`,
:func:`encode_shortstr`).
"""

from ._channel import Channel
from ._closing import AsyncClosing
from ._codec import decode_table, encode_shortstr, encode_table
from ._confirms import (
    ReturnCallback,
    dispatch_return,
    publish_not_confirmed,
    resolve_confirm,
)
from ._connection import Connection, connect
from ._consumer import (
    CancelCallback,
    Consumer,
    Consuming,
    ConsumingChannel,
    DeliveryCallback,
    DeliveryIterator,
    broker_cancelled,
    claim_consumer_tag,
    notify_cancel,
)
from ._declare import Declarations
from ._frames import Properties, PropertyValues
from ._message import Delivery, QueueDeclareOk, QueueType, ReturnedMessage, SettleKind, Settler
from ._robust import RobustChannel, RobustConnection, connect_robust
from ._states import ChannelState, ConnectionState
from ._tasks import TaskOwner
from ._tx import not_transactional, transactions_refused
from ._url import DEFAULT_URL, ConnectionParameters, parse_url, parse_urls

__all__ = [
    "DEFAULT_URL",
    "AsyncClosing",
    "CancelCallback",
    "Channel",
    "ChannelState",
    "Connection",
    "ConnectionParameters",
    "ConnectionState",
    "Consumer",
    "Consuming",
    "ConsumingChannel",
    "Declarations",
    "Delivery",
    "DeliveryCallback",
    "DeliveryIterator",
    "Properties",
    "PropertyValues",
    "QueueDeclareOk",
    "QueueType",
    "ReturnCallback",
    "ReturnedMessage",
    "RobustChannel",
    "RobustConnection",
    "SettleKind",
    "Settler",
    "TaskOwner",
    "broker_cancelled",
    "claim_consumer_tag",
    "connect",
    "connect_robust",
    "decode_table",
    "dispatch_return",
    "encode_shortstr",
    "encode_table",
    "not_transactional",
    "notify_cancel",
    "parse_url",
    "parse_urls",
    "publish_not_confirmed",
    "resolve_confirm",
    "transactions_refused",
]

"""leveret's own AMQP 0-9-1 client for asyncio.

It knows nothing of the patterns built on it. The hot path (publish, deliver,
ack, confirms) is parsed and packed by hand; frames are read from one buffer in
``data_received`` and writes are batched per event-loop turn.
"""

from ._channel import Channel, Consumer, DeliveryIterator
from ._connection import Connection, connect
from ._frames import Properties
from ._message import Delivery, QueueDeclareOk, ReturnedMessage
from ._robust import RobustConnection, connect_robust
from ._url import ConnectionParameters, parse_url, parse_urls

__all__ = [
    "Channel",
    "Connection",
    "ConnectionParameters",
    "Consumer",
    "Delivery",
    "DeliveryIterator",
    "Properties",
    "QueueDeclareOk",
    "ReturnedMessage",
    "RobustConnection",
    "connect",
    "connect_robust",
    "parse_url",
    "parse_urls",
]

"""leveret: Master/Worker and RPC over RabbitMQ for asyncio.

The patterns live in :mod:`leveret.patterns`; the AMQP client they run on in
:mod:`leveret.amqp`; every exception in :mod:`leveret.exceptions`.
"""

# Imported for its serve() hook too: every process that serves announces itself.
from . import fleet
from ._connect import ChannelLike, ConnectionLike, connect, connect_robust, safe_url
from ._version import __version__
from .amqp import Channel, Connection, Delivery, Properties, RobustConnection
from .app import App
from .exceptions import (
    AMQPConnectionError,
    AMQPError,
    BatchPublishError,
    BrokerError,
    ConfigurationError,
    ConnectError,
    LeveretError,
    MessageReturnedError,
    NoCalleeError,
    PublishError,
    RemoteError,
    SerializationError,
    UnroutableError,
)
from .patterns import RPC, Master, NackMessage, RejectMessage, Schedule, Worker

__all__ = [
    "RPC",
    "AMQPConnectionError",
    "AMQPError",
    "App",
    "BatchPublishError",
    "BrokerError",
    "Channel",
    "ChannelLike",
    "ConfigurationError",
    "ConnectError",
    "Connection",
    "ConnectionLike",
    "Delivery",
    "LeveretError",
    "Master",
    "MessageReturnedError",
    "NackMessage",
    "NoCalleeError",
    "Properties",
    "PublishError",
    "RejectMessage",
    "RemoteError",
    "RobustConnection",
    "Schedule",
    "SerializationError",
    "UnroutableError",
    "Worker",
    "__version__",
    "connect",
    "connect_robust",
    "fleet",
    "safe_url",
]

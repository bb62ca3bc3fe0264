"""aio-pika's ``aio_pika.patterns.master``: Master/Worker."""

from ..exceptions import MessageProcessingError, NackMessage, RejectMessage
from ._master import CompressedJsonMaster, JsonMaster, Master
from ._worker import Worker

__all__ = [
    "CompressedJsonMaster",
    "JsonMaster",
    "Master",
    "MessageProcessingError",
    "NackMessage",
    "RejectMessage",
    "Worker",
]

"""aio-pika's ``aio_pika.patterns.master``: Master/Worker."""

from ._master import CompressedJsonMaster, JsonMaster, Master
from ._worker import MessageProcessingError, NackMessage, RejectMessage, Worker

__all__ = [
    "CompressedJsonMaster",
    "JsonMaster",
    "Master",
    "MessageProcessingError",
    "NackMessage",
    "RejectMessage",
    "Worker",
]

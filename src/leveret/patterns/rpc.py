"""aio-pika's ``aio_pika.patterns.rpc``: remote procedure calls.

``JsonRPCError`` and ``RPCException`` are aio-pika's names for an error raised
by the callee; here both are :class:`~leveret.exceptions.RemoteError`, which is
also the remote exception's own type when that type is a builtin or registered.
"""

from ..exceptions import RemoteError
from ._rpc import RPC, CompressedJsonRPC, JsonRPC, RPCMessageType

JsonRPCError = RemoteError
RPCException = RemoteError

__all__ = [
    "RPC",
    "CompressedJsonRPC",
    "JsonRPC",
    "JsonRPCError",
    "RPCException",
    "RPCMessageType",
]

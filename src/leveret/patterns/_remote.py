"""Exceptions across the wire: what a callee sends for one, and what a caller rebuilds.

The error object is aio-pika's ``JsonRPC`` one, ``{"error": {"type", "message",
"args"}}``, to which leveret adds ``str``, ``module`` and ``traceback``. A caller
rebuilds it as a :class:`RemoteError` that is also the original type when that
type is a builtin exception, one of leveret's, or registered with the caller;
nothing is ever imported by a name that came over the wire, and no ``__init__``
it names is run.
"""

from __future__ import annotations

import builtins
import traceback
from collections.abc import Mapping
from typing import Any

from ..exceptions import CallRedeliveredError, RemoteError

#: Exception types a caller rebuilds by name without being told to.
KNOWN_EXCEPTIONS: dict[str, type[Exception]] = {
    **{
        name: value
        for name, value in vars(builtins).items()
        if isinstance(value, type) and issubclass(value, Exception)
    },
    CallRedeliveredError.__name__: CallRedeliveredError,
}
_REMOTE_CLASSES: dict[type[Exception], type[RemoteError]] = {}


def error_payload(exc: BaseException) -> dict[str, Any]:
    """The error object a callee sends for ``exc`` (aio-pika's fields, plus ours)."""
    return {
        "error": {
            "type": type(exc).__name__,
            "message": repr(exc),
            "args": list(exc.args),
            "str": str(exc),
            "module": type(exc).__module__,
            "traceback": "".join(traceback.format_exception(exc)),
        }
    }


def _remote_class(cls: type[Exception]) -> type[RemoteError]:
    """``RemoteValueError``: a :class:`RemoteError` that is also a ``ValueError``."""
    remote = _REMOTE_CLASSES.get(cls)
    if remote is None:
        try:
            remote = type(f"Remote{cls.__name__}", (RemoteError, cls), {"__module__": __name__})
        except TypeError:  # an exception type that cannot be mixed in
            remote = RemoteError
        _REMOTE_CLASSES[cls] = remote
    return remote


def rebuild_error(
    name: str, payload: Any, registered: Mapping[str, type[Exception]]
) -> RemoteError:
    """The exception a caller raises for the error reply ``payload`` to method ``name``.

    ``registered`` are the caller's own exception classes by name; they win over
    :data:`KNOWN_EXCEPTIONS`.
    """
    info = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(info, dict):
        return RemoteError(f"{name!r} failed, and its error reply is malformed: {payload!r:.200}")
    type_name = str(info.get("type", "Exception"))
    text = info.get("str", info.get("message", ""))
    text = text if isinstance(text, str) else repr(text)
    remote_traceback = info.get("traceback")
    remote_args = tuple(info["args"]) if isinstance(info.get("args"), list) else ()
    cls = registered.get(type_name) or KNOWN_EXCEPTIONS.get(type_name)
    error: RemoteError
    if cls is None:
        error = RemoteError(f"{type_name}: {text}")
    else:
        remote = _remote_class(cls)
        try:
            error = remote.__new__(remote)  # never runs an __init__ chosen by the wire
            error.args = remote_args or ((text,) if text else ())
        except Exception:
            error = RemoteError(f"{type_name}: {text}")
    error.remote_type = type_name
    error.remote_message = text
    error.remote_args = remote_args
    if isinstance(remote_traceback, str) and remote_traceback:
        error.remote_traceback = remote_traceback
        error.add_note(f"Raised by the RPC callee of {name!r}:\n{remote_traceback.rstrip()}")
    return error

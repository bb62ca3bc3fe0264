"""The fleet: which worker processes are alive, what they run, and cancelling tasks.

Every worker process (``leveret run``, and any code that calls
:func:`~leveret.patterns.serve`) runs an :class:`Agent` that sends a heartbeat to
the control exchange ``leveret.control`` every two seconds and answers inspect
requests; :func:`read_workers` lists the workers from the registry that keeps the
latest heartbeats, :func:`inspect` asks the live ones what they run, and
:func:`cancel` (as :meth:`Master.cancel <leveret.patterns.Master.cancel>`)
revokes a task. Nothing but the broker holds this state.
"""

from ..patterns import ServeHook, serve_hooks
from ._agent import Agent, ControlChannel, ControlConnection, agents, new_worker_id
from ._hook import serving
from ._inspect import Inspection, RunningTask, inspect
from ._registry import (
    DEFAULT_INTERVAL,
    DROPPED_AFTER,
    LOST_AFTER,
    REGISTRY_QUEUE,
    State,
    WorkerInfo,
    read_workers,
)
from ._revoke import cancel

_hook: ServeHook = serving
if _hook not in serve_hooks:
    serve_hooks.append(_hook)

__all__ = [
    "DEFAULT_INTERVAL",
    "DROPPED_AFTER",
    "LOST_AFTER",
    "REGISTRY_QUEUE",
    "Agent",
    "ControlChannel",
    "ControlConnection",
    "Inspection",
    "RunningTask",
    "State",
    "WorkerInfo",
    "agents",
    "cancel",
    "inspect",
    "new_worker_id",
    "read_workers",
    "serving",
]

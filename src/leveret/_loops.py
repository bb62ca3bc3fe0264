"""The event loop ``leveret run`` and ``leveret demo`` run on: uvloop (part of the speed
extra, ``pip install 'leveret[speed]'``) when it is installed, else asyncio's own.
The library itself runs on whatever loop it is given."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .exceptions import ConfigurationError

#: What ``--loop`` takes: ``auto`` is uvloop if installed, else asyncio.
LOOPS = ("auto", "asyncio", "uvloop")


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What makes the event loop ``choice`` names; ``None`` for asyncio's default.

    Raises:
        ConfigurationError: ``uvloop`` was asked for and is not installed.
    """
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigurationError(
                "uvloop is not installed: pip install 'leveret[speed]' (or --loop asyncio)"
            ) from None
        return None
    return uvloop.new_event_loop


def event_loop_name() -> str:
    """The running event loop's kind, as a log line says it: ``uvloop`` or ``asyncio``."""
    return type(asyncio.get_running_loop()).__module__.partition(".")[0]

"""Heartbeats for any process that calls :func:`leveret.patterns.serve`.

:func:`serving` is registered in :data:`leveret.patterns.serve_hooks` when this
package is imported (``import leveret`` does it): while ``serve()`` runs, an
:class:`Agent` reports on the Masters and RPCs it serves, unless one already
does (``leveret run`` starts its own before its workers consume). Its app name
is that of the ``__main__`` script. A fleet that cannot start is logged, and
serving goes on without it.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from ..exceptions import AMQPError
from ..patterns import RPC, Closable, Master
from ._agent import Agent, agents

log = logging.getLogger("leveret.fleet")


def _app_name() -> str:
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    return Path(main).stem if main else "python"


@contextlib.asynccontextmanager
async def serving(services: Sequence[Closable]) -> AsyncIterator[None]:
    """An agent for the Masters and RPCs among ``services`` no agent reports on yet."""
    served = [
        service
        for service in services
        if isinstance(service, (Master, RPC))
        and not any(agent.reports_on(service) for agent in agents)
    ]
    if not served:
        yield
        return
    connection = getattr(served[0].channel, "connection", None)
    if connection is None:
        yield
        return
    agent = Agent(connection, _app_name())
    agent.attach(*served)
    try:
        await agent.start()
    except AMQPError as exc:
        log.warning("the fleet's heartbeats could not start (%s): serving without them", exc)
        with contextlib.suppress(AMQPError):
            await agent.close()
        yield
        return
    try:
        yield
    finally:
        await agent.close()

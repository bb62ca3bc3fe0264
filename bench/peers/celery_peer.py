"""Celery on the py-amqp transport, for the peers benchmark.

The worker runs as Celery's own command (``celery -A bench.peers.celery_peer:app
worker ...``, see ``bench/peers/__init__.py``); the producer and caller open the
same app in their process. Settings (Celery's defaults in brackets):

- ``task_acks_late=True`` [False: acked before it runs]: acked after the task ran,
  as every other library here does;
- ``worker_prefetch_multiplier=128`` [4]: what Celery's optimizing guide advises
  for many short tasks (prefetch = multiplier x concurrency);
- ``task_ignore_result=True`` for tasks [False, and no backend]; RPC uses the
  ``rpc://`` result backend (replies on a queue of the caller's), ``get()`` per call;
- ``worker_enable_remote_control=False`` [True] and ``--without-gossip
  --without-mingle --without-heartbeat``: no pidbox or event exchanges left on the
  shared broker, no broadcast traffic;
- the queue: ``task_default_queue`` = the run's queue (durable, classic, its exchange
  of the same name), messages persistent (Celery's default); publisher confirms
  off (Celery's default), each ``send_task`` one synchronous publish.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from typing import Any, Final

from celery import Celery  # type: ignore[import-untyped]

from bench._clients import Send
from bench.peers._run import PeerRun, Recorder

RECORD: Final = "bench.record"
MULTIPLY: Final = "bench.multiply"
PREFETCH_MULTIPLIER: Final = 128


def celery_url(url: str) -> str:
    """The AMQP URL for Celery's py-amqp transport (``pyamqp://``, vhost spelt out)."""
    parts = urllib.parse.urlsplit(url)
    vhost = urllib.parse.unquote(parts.path[1:]) or "/"
    return urllib.parse.urlunsplit(
        ("pyamqp", parts.netloc, "/" + urllib.parse.quote(vhost, safe=""), "", "")
    )


def make_app(run: PeerRun) -> Celery:
    app = Celery(
        "bench_peer", broker=celery_url(run.url), backend="rpc://" if run.mode == "rpc" else None
    )
    app.conf.update(
        task_default_queue=run.queue,
        task_acks_late=True,
        worker_prefetch_multiplier=PREFETCH_MULTIPLIER,
        task_ignore_result=run.mode == "tasks",
        worker_enable_remote_control=False,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
    )
    record = Recorder(run.ids_dir)

    @app.task(name=RECORD)  # type: ignore[untyped-decorator]
    def record_task(task_id: int) -> None:
        record(task_id)

    @app.task(name=MULTIPLY)  # type: ignore[untyped-decorator]
    def multiply(x: int, y: int) -> int:
        return x * y

    return app


class CeleryDriver:
    """Sends tasks with ``app.send_task`` and calls with ``send_task(...).get()``:
    both synchronous, so one call at a time."""

    def __init__(self, app: Celery) -> None:
        self._app = app

    async def task_creator(self) -> Send:
        send_task = self._app.send_task

        async def create_task(queue: str, kwargs: dict[str, Any]) -> None:
            send_task(RECORD, kwargs=kwargs, queue=queue)

        return create_task

    async def rpc_caller(self) -> Send:
        send_task = self._app.send_task

        async def call(queue: str, kwargs: dict[str, Any]) -> Any:
            return send_task(MULTIPLY, kwargs=kwargs, queue=queue).get(timeout=60)

        return call

    async def close(self) -> None:
        await asyncio.to_thread(self._app.close)


async def open_driver() -> CeleryDriver:
    return CeleryDriver(app)


#: The app of this process's run (``celery -A`` imports it).
app: Final = make_app(PeerRun.from_env())

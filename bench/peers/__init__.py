"""The peers benchmark's libraries: how each one's worker is started, what it
declares on the broker, and the settings it runs with (stated in the table).

``bench/peers_bench.py`` runs them; ``python -m bench.peers`` is the same. Each
``<peer>_peer.py`` module is that library's app (imported by its own worker CLI) and
its driver (the producer's and caller's side); ``serve.py`` is the worker command
of leveret and aio-pika; ``_run.py`` what they are told and how executions are
recorded.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from typing import Final

from bench.peers._run import PeerRun

PYTHON: Final = sys.executable
#: One call at a time, and ``--in-flight`` (64) calls at once.
RPC_SCENARIOS: Final = ("rpc-sequential", "rpc-in-flight")


@dataclasses.dataclass(frozen=True)
class Peer:
    """One library in one configuration: a row of the peers table."""

    library: str
    variant: str
    #: What was chosen, with the library's default in brackets where it differs.
    settings: str
    #: The worker command of a run.
    command: Callable[[PeerRun], list[str]]
    #: What a run's queue ``q`` makes the library declare: (queues, exchanges).
    declares: Callable[[str], tuple[list[str], list[str]]]
    #: The module with its app and its ``open_driver()`` (none: the patterns client).
    driver: str = ""
    #: Extra environment of the worker command.
    env: tuple[tuple[str, str], ...] = ()
    #: Producer coroutines (1: the library sends synchronously, one at a time).
    lanes: int | None = None
    #: The RPC scenarios it runs, and why any is missing.
    rpc: tuple[str, ...] = RPC_SCENARIOS
    no_rpc: str = ""

    @property
    def name(self) -> str:
        return f"{self.library} ({self.variant})"

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() else "-" for c in f"{self.library}-{self.variant}")


def _serve(library: str) -> Callable[[PeerRun], list[str]]:
    return lambda run: [PYTHON, "-m", "bench.peers.serve", library]


def _leveret_declares(queue: str) -> tuple[list[str], list[str]]:
    from leveret import patterns

    return [queue, patterns.dead_letter_queue(queue)], []


def _celery(pool: list[str]) -> Callable[[PeerRun], list[str]]:
    def command(run: PeerRun) -> list[str]:
        return [
            *(PYTHON, "-m", "celery", "-A", "bench.peers.celery_peer:app", "worker"),
            *pool,
            *("--without-gossip", "--without-mingle", "--without-heartbeat"),
            *("--loglevel", "WARNING", "--queues", run.queue, "--hostname", f"{run.queue}@%h"),
        ]

    return command


CELERY_SETTINGS: Final = (
    "py-amqp; acks_late [off], prefetch multiplier 128 [4], no result for tasks, "
    "rpc:// backend for calls, no remote control/gossip/mingle/heartbeat; "
    "send_task synchronous, no confirms [default]"
)

PEERS: Final = (
    Peer(
        "leveret",
        "default",
        "durable queue [default], prefetch 256 [default], confirmed create_task",
        _serve("leveret"),
        _leveret_declares,
    ),
    Peer(
        "aio-pika",
        "JsonMaster/JsonRPC",
        "durable=True [False], no qos [default], confirming channel [default]",
        _serve("aio-pika"),
        lambda queue: ([queue], []),
    ),
    Peer(
        "celery",
        "solo",
        f"-P solo [prefork]; {CELERY_SETTINGS}",
        _celery(["--pool", "solo"]),
        lambda queue: ([queue], [queue]),
        driver="bench.peers.celery_peer",
        lanes=1,
        rpc=("rpc-sequential",),
        no_rpc="64 in flight: not run, result.get() waits for one call at a time",
    ),
    Peer(
        "celery",
        "prefork -c 2",
        f"-P prefork -c 2 [one per CPU]; {CELERY_SETTINGS}",
        _celery(["--pool", "prefork", "--concurrency", "2"]),
        lambda queue: ([queue], [queue]),
        driver="bench.peers.celery_peer",
        lanes=1,
        rpc=(),
        no_rpc="measured with -P solo",
    ),
    Peer(
        "dramatiq",
        "1 process x 8 threads",
        "pika; --processes 1 [one per CPU] --threads 8 [8], prefetch 256 [16], "
        "send synchronous, confirm_delivery off [default]",
        lambda run: [
            *(PYTHON, "-m", "dramatiq", "bench.peers.dramatiq_peer:broker"),
            *("--processes", "1", "--threads", "8"),
        ],
        lambda queue: ([queue, f"{queue}.DQ", f"{queue}.XQ"], []),
        driver="bench.peers.dramatiq_peer",
        env=(("dramatiq_queue_prefetch", "256"),),
        lanes=1,
        rpc=(),
        no_rpc="none: its results need Redis or Memcached",
    ),
    Peer(
        "faststream",
        "RabbitBroker",
        "durable queue, persist=True [False], no qos [default], logger=None [a line per "
        "message], confirmed publish [default]; request() for calls",
        lambda run: [
            *(PYTHON, "-m", "faststream", "run", "bench.peers.faststream_peer:app"),
            *("--workers", "1", "--log-level", "warning"),
        ],
        lambda queue: ([queue], []),
        driver="bench.peers.faststream_peer",
    ),
    Peer(
        "taskiq",
        "aio-pika broker",
        "--workers 1 [2], qos 256 [10], classic durable queue [quorum], max 100 tasks at "
        "once [default], confirmed kiq [default]",
        lambda run: [
            *(PYTHON, "-m", "taskiq", "worker", "bench.peers.taskiq_peer:broker"),
            *("--workers", "1", "--log-level", "WARNING"),
        ],
        lambda queue: ([queue, f"{queue}.dead_letter"], [f"{queue}.exchange"]),
        driver="bench.peers.taskiq_peer",
        rpc=(),
        no_rpc="none: taskiq-aio-pika has no result backend",
    ),
)

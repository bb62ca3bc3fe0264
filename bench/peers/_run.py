"""What a peer's worker, producer and caller are told about their run, and the
record of executions that proves none was lost or doubled.

A worker command gets its run through the ``LEVERET_BENCH_PEER`` environment
variable (the peers' CLIs import an app module, which reads it). Every executed
task appends its id and a newline to a file of its own process in the run's
folder (one ``os.write`` on an ``O_APPEND`` file: atomic on Linux, whichever thread
or pool process writes), so the main process can follow progress by the files'
sizes and check the ids once the worker has stopped.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from pathlib import Path
from typing import Final, Literal

ENV: Final = "LEVERET_BENCH_PEER"


@dataclasses.dataclass(frozen=True)
class PeerRun:
    """One run of a peer: the broker, its queue (the task or method name too), the
    folder of execution records, and whether it serves tasks or RPC calls."""

    url: str
    queue: str
    ids_dir: str
    mode: Literal["tasks", "rpc"]

    def env(self) -> dict[str, str]:
        return {ENV: json.dumps(dataclasses.asdict(self))}

    @classmethod
    def from_env(cls) -> PeerRun:
        """The run this process belongs to; ``RuntimeError`` outside a peers run."""
        try:
            return cls(**json.loads(os.environ[ENV]))
        except KeyError:
            raise RuntimeError(
                f"{ENV} is not set: this module runs inside bench/peers_bench.py"
            ) from None


class Recorder:
    """Records executed task ids in ``<ids_dir>/<pid>.ids``, one per line."""

    def __init__(self, ids_dir: str) -> None:
        self._dir = ids_dir
        self._pid = 0
        self._fd = -1

    def __call__(self, task_id: int) -> None:
        pid = os.getpid()
        if self._pid != pid:  # first call, or a pool process forked from us
            path = os.path.join(self._dir, f"{pid}.ids")
            # The file before the pid: a thread that sees this pid finds its file
            # open (two first calls at once both open it, and both can append).
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._pid = pid
        os.write(self._fd, b"%d\n" % task_id)


def recorded_bytes(ids_dir: str) -> int:
    """How many bytes of ids the run's processes have written so far."""
    total = 0
    with os.scandir(ids_dir) as entries:
        for entry in entries:
            if entry.name.endswith(".ids"):
                total += entry.stat().st_size
    return total


def bytes_for(count: int) -> int:
    """The bytes the ids ``0..count-1`` take, one per line."""
    total, digits, low = 0, 1, 0
    while low < count:
        high = min(count, 10**digits)
        total += (high - low) * (digits + 1)
        low, digits = high, digits + 1
    return total


def executions(ids_dir: str) -> collections.Counter[int]:
    """How many times each id was executed."""
    counts: collections.Counter[int] = collections.Counter()
    for path in Path(ids_dir).glob("*.ids"):
        counts.update(int(line) for line in path.read_bytes().split())
    return counts


def execution_check(ids_dir: str, expected: int) -> dict[str, int]:
    """Ids ``0..expected-1`` executed exactly once? Counts of each outcome."""
    counts = executions(ids_dir)
    lost = sum(1 for i in range(expected) if i not in counts)
    return {
        "expected": expected,
        "executed": sum(counts.values()),
        "lost": lost,
        "doubled": sum(1 for c in counts.values() if c > 1),
        "unexpected": sum(1 for i in counts if not 0 <= i < expected),
    }

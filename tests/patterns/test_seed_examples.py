"""The seed examples (``examples/seed/``) run unchanged except for their imports.

They are copies of aio-pika's documented pattern examples with ``aio_pika``
swapped for ``leveret`` in the import lines, and nothing else. The runnable ones
are started as subprocesses against the real broker; the msgpack subclasses are
imported and exercised in-process.

The worker/master and callee/caller pairs use the queue names written in the
examples (``my_task_name``, ``multiply``), so they cannot be made unique: a
stale queue of that name without consumers is removed first, and a test fails
at once if another process is consuming it.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import msgpack  # type: ignore[import-untyped,unused-ignore]
import pytest

import leveret
from leveret.amqp import Connection, Delivery, QueueDeclareOk
from leveret.exceptions import NotFoundError, RemoteError
from leveret.patterns import REPLY_TO, Master, dead_letter_queue, delay_queues
from tests.patterns.conftest import Cleanup
from tests.support.waiting import wait_until

# The examples run as subprocesses that connect to the real broker.
pytestmark = pytest.mark.rabbitmq_only

REPO_ROOT = Path(__file__).resolve().parents[2]
SEED_DIR = REPO_ROOT / "examples" / "seed"
# aio-pika's originals, where a checkout has them beside it; the hashes below
# hold them for every other clone (CI included).
ORIGINALS_DIR = REPO_ROOT.parent / "shared" / "seed" / "examples"
ORIGINAL_SHA256 = {
    "master.py": "972aae0963cb15de567db7e692a4d1481b20d82ff8b3f37ba4c1d3a0b0219456",
    "msgpack_extending.py": "3068aa76ca506c9b5f170724c66657621294880d8e01786e732ec632d0fabb22",
    "rpc_callee.py": "213725fe12cafe568ac3cd404e2cb5d92e255653476a10f8bb8e47cde1aff1fd",
    "rpc_caller.py": "d103e920a6de216a026f9ce76873622af4a563adf2261b9fcc3bb8a2fd01ef81",
    "worker.py": "d065cd7f7658c43bfc3427902fc026a264427c5e8a6021d98a33bf35f3a37f3c",
}
SEED_FILES = tuple(ORIGINAL_SHA256)
# Whole-line prefixes: the original's import on the left, the copy's on the right.
IMPORT_SWAPS = {
    b"from aio_pika import connect_robust\n": b"from leveret import connect_robust\n",
    b"from aio_pika.patterns import ": b"from leveret.patterns import ",
}
MSGPACK = "application/msgpack"
LEVERET_DIR = str(Path(leveret.__file__).parent)  # a traceback through it is a bug

# -- the copies are faithful ---------------------------------------------------------


def _swap_lines(text: bytes, swaps: Mapping[bytes, bytes]) -> bytes:
    lines = text.splitlines(keepends=True)
    for index, line in enumerate(lines):
        for old, new in swaps.items():
            if line.startswith(old):
                lines[index] = new + line[len(old) :]
    return b"".join(lines)


def _swap_imports(original: bytes) -> bytes:
    """The original with its aio_pika imports made leveret's."""
    return _swap_lines(original, IMPORT_SWAPS)


def _swap_imports_back(copy: bytes) -> bytes:
    """The copy with its leveret imports made aio_pika's again."""
    return _swap_lines(copy, {new: old for old, new in IMPORT_SWAPS.items()})


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_seed_examples_differ_from_aio_pikas_only_in_their_import_lines() -> None:
    copies = sorted(path.name for path in SEED_DIR.glob("*.py"))
    assert copies == sorted(ORIGINAL_SHA256), f"examples/seed/ holds {copies}"
    for name, digest in ORIGINAL_SHA256.items():
        copy = (SEED_DIR / name).read_bytes()
        original = _swap_imports_back(copy)
        assert original != copy, f"examples/seed/{name} does not import leveret"
        assert _sha256(original) == digest, f"examples/seed/{name} differs beyond its imports"
    if ORIGINALS_DIR.is_dir():  # this checkout has the originals: compare with them too
        originals = sorted(path.name for path in ORIGINALS_DIR.glob("*.py"))
        assert originals == sorted(ORIGINAL_SHA256), f"{ORIGINALS_DIR} holds {originals}"
        for name, digest in ORIGINAL_SHA256.items():
            original = (ORIGINALS_DIR / name).read_bytes()
            assert _sha256(original) == digest, f"the stored hash of {name} is not the original's"
            copy = (SEED_DIR / name).read_bytes()
            assert copy == _swap_imports(original), (
                f"examples/seed/{name} differs beyond its imports"
            )


def test_seed_examples_import_leveret_and_never_aio_pika() -> None:
    for name in SEED_FILES:
        text = (SEED_DIR / name).read_text()
        assert "aio_pika" not in text, name
        assert "from leveret.patterns import " in text, name


# -- running the examples ------------------------------------------------------------


class Example:
    """One seed example running as a subprocess, its output going to files."""

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, str(SEED_DIR / f"{name}.py")],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=workdir,
                # A child inherits an ignored SIGINT (a shell's background job);
                # the examples must see Ctrl-C as a user's terminal sends it.
                preexec_fn=_default_sigint,
            )

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def describe(self) -> str:
        return (
            f"{self.name}.py (exit code {self.process.poll()}) wrote to stderr:\n"
            f"{self.stderr[-3000:] or '(nothing)'}"
        )

    async def wait(self, timeout: float) -> int:
        """Wait for the process to exit; its exit code."""
        await wait_until(
            lambda: self.process.poll() is not None, timeout, f"{self.name}.py to exit"
        )
        return self.process.returncode

    def check_running(self, what: str) -> None:
        """Fail at once if the process has exited (while the test waits for ``what``)."""
        if not self.running:
            raise AssertionError(
                f"{self.name}.py exited while waiting for {what}: {self.describe()}"
            )

    def kill(self) -> None:
        if self.running:
            self.process.kill()
        self.process.wait(10)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def _queue_state(connection: Connection, name: str) -> QueueDeclareOk | None:
    """The queue's counts (passive declare), or ``None`` if it does not exist."""
    channel = await connection.channel()
    try:
        return await channel.queue_declare(name, passive=True)
    except NotFoundError:
        return None
    finally:
        await channel.close()


async def _claim_fixed_queue(connection: Connection, name: str) -> None:
    """Make sure no one else uses the example's queue; drop a stale one."""
    state = await _queue_state(connection, name)
    if state is None:
        return
    assert state.consumer_count == 0, (
        f"another process consumes {name!r} on the shared broker; the seed examples need it"
    )
    channel = await connection.channel()
    try:
        await channel.queue_delete(name)
    finally:
        await channel.close()


@pytest.fixture
def examples(tmp_path: Path) -> Iterator[Callable[[str], Example]]:
    """Start seed examples by name; every one is killed when the test ends."""
    started: list[Example] = []

    def start(name: str) -> Example:
        example = Example(name, tmp_path)
        started.append(example)
        return example

    try:
        yield start
    finally:
        for example in started:
            example.kill()


async def _wait_for_consumer(connection: Connection, queue: str, server: Example) -> None:
    what = f"{server.name}.py to consume {queue!r}"

    async def consumed() -> bool:
        server.check_running(what)
        state = await _queue_state(connection, queue)
        return state is not None and state.consumer_count > 0

    await wait_until(consumed, 30, what)


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Warning)\b", re.M)


async def _interrupt_and_expect_a_clean_exit(
    connection: Connection, server: Example, queue: str
) -> None:
    """Ctrl-C the server: it exits promptly, reports nothing but the interrupt,
    and its ``auto_delete`` queue goes away with its consumer."""
    server.process.send_signal(signal.SIGINT)
    returncode = await server.wait(15)
    stderr = server.stderr
    assert returncode in (-signal.SIGINT, 130, 0), server.describe()
    # asyncio.run turns Ctrl-C into a cancelled main() and then KeyboardInterrupt;
    # anything else (a failing close, a leaked task, a warning) is a bug.
    raised = {match.group(0) for match in _EXCEPTION_LINE.finditer(stderr)}
    assert raised <= {"asyncio.exceptions.CancelledError", "KeyboardInterrupt"}, server.describe()
    assert stderr == "" or stderr.rstrip().endswith("KeyboardInterrupt"), server.describe()
    for trouble in ("Task was destroyed", "never retrieved", "Unclosed", LEVERET_DIR):
        assert trouble not in stderr, server.describe()

    async def gone() -> bool:
        return await _queue_state(connection, queue) is None

    await wait_until(gone, 10, f"the auto_delete queue {queue!r} to go with its worker")


async def test_seed_master_publishes_2000_tasks_that_the_seed_worker_consumes(
    connection: Connection, examples: Callable[[str], Example]
) -> None:
    queue = "my_task_name"
    await _claim_fixed_queue(connection, queue)
    await _claim_fixed_queue(connection, dead_letter_queue(queue))
    try:
        worker = examples("worker")
        await _wait_for_consumer(connection, queue, worker)

        master = examples("master")
        assert await master.wait(60) == 0, master.describe()
        assert master.stdout == "" and master.stderr == "", master.describe()

        # The seed worker rejects even task ids and nacks odd ones, both without
        # requeue: every task leaves the queue and none comes back.
        async def drained() -> QueueDeclareOk | None:
            worker.check_running(f"{queue!r} to drain")
            state = await _queue_state(connection, queue)
            return state if state is not None and state.message_count == 0 else None

        state = await wait_until(drained, 60, f"{queue!r} to drain")
        assert state.consumer_count == 1
        # Rejected and nacked without requeue, each task is kept in the dead-letter queue.
        dead = await _queue_state(connection, dead_letter_queue(queue))
        assert dead is not None and dead.message_count == 2000
        assert worker.running, worker.describe()
        # Its print() is never reached (every task is rejected or nacked), and
        # settling tasks as the function asked is not worth a log line.
        assert worker.stdout == "" and worker.stderr == "", worker.describe()

        await _interrupt_and_expect_a_clean_exit(connection, worker, queue)
    finally:
        for left in (queue, dead_letter_queue(queue), *delay_queues(queue)):
            await _delete_if_left(connection, left)


async def test_seed_rpc_caller_prints_the_2000_products_from_the_seed_callee_in_order(
    connection: Connection, examples: Callable[[str], Example]
) -> None:
    queue = "multiply"
    await _claim_fixed_queue(connection, queue)
    try:
        callee = examples("rpc_callee")
        await _wait_for_consumer(connection, queue, callee)

        caller = examples("rpc_caller")
        assert await caller.wait(60) == 0, caller.describe()
        expected = [str(100 * i) for i in range(1000)] * 2
        assert caller.stdout.splitlines() == expected
        assert caller.stderr == "", caller.describe()
        assert callee.running and callee.stdout == "" and callee.stderr == "", callee.describe()

        await _interrupt_and_expect_a_clean_exit(connection, callee, queue)
    finally:
        await _delete_if_left(connection, queue)


async def _delete_if_left(connection: Connection, queue: str) -> None:
    if await _queue_state(connection, queue) is None:
        return
    channel = await connection.channel()
    try:
        await channel.queue_delete(queue)
    finally:
        await channel.close()


# -- the msgpack subclasses ----------------------------------------------------------


def _load_msgpack_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "leveret_seed_msgpack_extending", SEED_DIR / "msgpack_extending.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# bytes have no JSON form: a round trip of them shows msgpack did the work.
KWARGS = {"blob": b"\x00\xff\x10", "text": "h\u00e9llo", "n": 7, "items": [1, 2.5, None]}


async def test_seed_msgpack_master_sends_msgpack_tasks_that_its_worker_runs(
    connection: Connection, unique: str, cleanup: Cleanup
) -> None:
    module = _load_msgpack_example()
    channel = await connection.channel()
    master = module.MsgpackMaster(channel)
    assert isinstance(master, Master)

    # On the wire: a task is a msgpack body labelled application/msgpack.
    wire = cleanup.queue(f"{unique}.wire")
    await channel.queue_declare(wire)
    await master.create_task(wire, kwargs=KWARGS)
    delivery = await channel.get(wire, no_ack=True)
    assert delivery is not None
    assert delivery.properties.content_type == MSGPACK
    assert msgpack.unpackb(delivery.body) == KWARGS

    # End to end: the subclass's worker decodes what the subclass published.
    received: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    async def task(**kwargs: Any) -> None:
        received.set_result(kwargs)

    worker = await master.create_worker(cleanup.queue(unique), task, auto_delete=True)
    try:
        await master.create_task(unique, kwargs=KWARGS)
        assert await asyncio.wait_for(received, 10) == KWARGS
    finally:
        await worker.close()


async def test_seed_msgpack_rpc_calls_and_replies_travel_as_msgpack(
    connection: Connection, unique: str, cleanup: Cleanup
) -> None:
    module = _load_msgpack_example()

    async def reverse_blob(*, blob: bytes, **rest: Any) -> dict[str, Any]:
        if not blob:
            raise ValueError("empty blob", 0)
        return {"blob": blob[::-1], "rest": rest}

    expected = {"blob": b"\x10\xff\x00", "rest": {k: v for k, v in KWARGS.items() if k != "blob"}}
    callee = await module.MsgpackRPC.create(await connection.channel())
    caller = await module.MsgpackRPC.create(await connection.channel())
    raw = await connection.channel()
    try:
        await callee.register(cleanup.queue(unique), reverse_blob, auto_delete=True)

        # On the wire: a hand-made msgpack call gets a msgpack reply.
        replies: asyncio.Queue[Delivery] = asyncio.Queue()
        await raw.consume(REPLY_TO, replies.put_nowait, no_ack=True)
        await raw.publish(
            msgpack.packb(KWARGS),
            routing_key=unique,
            content_type=MSGPACK,
            correlation_id="raw-1",
            reply_to=REPLY_TO,
            type="call",
        )
        reply = await asyncio.wait_for(replies.get(), 10)
        assert reply.properties.content_type == MSGPACK
        assert reply.properties.type == "result"
        assert reply.properties.correlation_id == "raw-1"
        assert msgpack.unpackb(reply.body) == expected

        # End to end, through the subclass on both sides: a result and an error.
        assert await caller.call(unique, kwargs=KWARGS, timeout=10) == expected
        with pytest.raises(ValueError, match="empty blob") as caught:
            await caller.call(unique, kwargs={"blob": b""}, timeout=10)
        assert isinstance(caught.value, RemoteError)
        assert caught.value.args == ("empty blob", 0)
    finally:
        await caller.close()
        await callee.close()
        await raw.close()

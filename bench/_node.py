"""The amqplib (Node.js) reference clients in ``bench/node``: what the broker carries
for a well-optimized client, measured in the same run as leveret."""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
from pathlib import Path
from typing import Any, Final

NODE_DIR: Final = Path(__file__).resolve().parent / "node"


def node_ready() -> str | None:
    """Why the reference cannot run, or None once it can (``npm ci`` installs amqplib
    into ``bench/node`` the first time)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        return "node and npm are not installed"
    if not (NODE_DIR / "node_modules" / "amqplib").is_dir():
        print("installing amqplib for the reference (npm ci in bench/node) ...", flush=True)
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, capture_output=True, text=True
        )
        if done.returncode:
            return f"npm ci failed: {done.stderr.strip()[-300:]}"
    return None


def run_node(script: str, *args: object, timeout: float) -> tuple[dict[str, Any], float]:
    """Run ``bench/node/<script>`` with ``args``; its last line of output (JSON) and the
    CPU seconds the Node process used.

    Raises:
        RuntimeError: it failed (with the end of what it printed on stderr).
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        ["node", script, *map(str, args)],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise RuntimeError(f"node {script} failed: {done.stderr.strip()[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result, cpu

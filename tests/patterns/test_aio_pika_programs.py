"""Programs written for aio-pika's patterns run on leveret with only the package name changed.

Each program in ``examples/aio_pika/`` is run twice against the real broker: as
written, with aio-pika (proving it is a real aio-pika program), and with
``aio_pika`` replaced by ``leveret`` in its import lines and nothing else. Both
runs must exit 0 and print ``OK``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import AMQP_URL

pytestmark = pytest.mark.rabbitmq_only

PROGRAMS_DIR = Path(__file__).resolve().parents[2] / "examples" / "aio_pika"
PROGRAMS = sorted(path.stem for path in PROGRAMS_DIR.glob("*.py"))
_IMPORT_LINE = re.compile(r"^(from|import) aio_pika\b", re.MULTILINE)


def as_leveret_program(source: str) -> str:
    """The program with ``aio_pika`` swapped for ``leveret`` in its import lines only."""
    return _IMPORT_LINE.sub(r"\1 leveret", source)


def test_every_program_is_an_aio_pika_program_and_the_swap_touches_only_imports() -> None:
    assert len(PROGRAMS) >= 6
    for name in PROGRAMS:
        source = (PROGRAMS_DIR / f"{name}.py").read_text()
        swapped = as_leveret_program(source)
        assert "leveret" not in source, name
        assert "aio_pika" not in swapped, f"{name}.py names aio_pika outside its imports"
        changed = [
            (old, new)
            for old, new in zip(source.splitlines(), swapped.splitlines(), strict=True)
            if old != new
        ]
        assert changed and all(
            old.startswith(("from aio_pika", "import aio_pika")) for old, _ in changed
        )


@pytest.mark.parametrize("library", ["aio_pika", "leveret"])
@pytest.mark.parametrize("program", PROGRAMS)
def test_aio_pika_program_runs_and_prints_ok(
    amqp_url: str, program: str, library: str, tmp_path: Path
) -> None:
    source = (PROGRAMS_DIR / f"{program}.py").read_text()
    path = tmp_path / f"{program}.py"
    path.write_text(source if library == "aio_pika" else as_leveret_program(source))
    prefix = f"lvprog_{uuid.uuid4().hex[:10]}"
    result = subprocess.run(
        [sys.executable, str(path), prefix],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, "AMQP_URL": AMQP_URL},
        cwd=tmp_path,
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), (
        f"{program}.py on {library} exited {result.returncode}:\n"
        f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    )

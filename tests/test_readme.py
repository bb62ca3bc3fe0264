"""The README's App and its test are files of examples/shop, and that test passes, as a
user would run it: in a project of its own, pytest-asyncio in strict mode, leveret's
plugin from its entry point."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "shop"
FILES = ("shop/tasks.py", "tests/test_shop.py")


def _python_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    return re.findall(r"^```python\n(.*?)^```$", readme, flags=re.DOTALL | re.MULTILINE)


@pytest.mark.parametrize("name", FILES)
def test_the_readme_shows_the_example_app_and_its_test_as_they_are(name: str) -> None:
    blocks = [block for block in _python_blocks() if block.startswith(f"# {name}\n")]
    assert blocks == [(EXAMPLE / name).read_text()], f"README's {name} differs from {EXAMPLE}"


def test_the_readme_test_of_an_app_passes(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        """
        [pytest]
        pythonpath = .
        asyncio_default_fixture_loop_scope = function
        filterwarnings = error
        """
    )
    for name in ("shop/__init__.py", *FILES):
        target = pytester.path / name
        target.parent.mkdir(exist_ok=True)
        target.write_text((EXAMPLE / name).read_text())
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=5)

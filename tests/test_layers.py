"""The layers of leveret, checked on its imports (read with ``ast``, none executed).

The packages are ``leveret.amqp``, ``leveret.patterns``, ``leveret.testing`` and
the root ``leveret`` (its top-level modules: ``app``, ``cli``, ``blocking``,
``exceptions``, ``_connect`` ...). The rules:

1. A private module (one whose name, or a package's on the way to it, starts
   with ``_``) is imported only by modules of its own package; other packages
   use what the package's ``__init__`` exports. The root's private modules
   (``leveret._connect``, ``leveret._demo``) are thus for top-level modules only.
   One exception: ``leveret._version`` holds nothing but the version string
   (``pyproject.toml`` reads it from there) and every layer may read it
   (``leveret.amqp`` sends it to the broker).
2. ``leveret.amqp`` is the wire and knows nothing above it: it imports no other
   package, and from the root only ``leveret.exceptions`` and ``leveret._version``.
3. ``leveret.patterns`` knows nothing of the in-memory broker or of the
   application layer: it imports neither ``leveret.testing`` nor a top-level
   module but ``leveret.exceptions`` and ``leveret.serializers``.
4. ``leveret.fleet`` stands on the patterns, like the app and the CLI: it imports
   ``leveret.patterns``, ``leveret.amqp``, ``leveret.exceptions`` and
   ``leveret._version``, and nothing else (no in-memory broker, no CLI).

Every import counts, wherever it stands: inside functions (imported lazily) and
under ``TYPE_CHECKING`` too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import leveret

SOURCE = Path(leveret.__file__).parent
SHARED_LEAF = "leveret._version"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    relative = Path(*name.split(".")[1:]) if "." in name else Path()
    base = SOURCE / relative
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


MODULES = {_module_name(path): path for path in sorted(SOURCE.rglob("*.py"))}


def _package(module: str) -> str:
    """The package a module belongs to: ``leveret.amqp``, ..., or the root ``leveret``."""
    parts = module.split(".")
    if len(parts) > 1 and (SOURCE / parts[1] / "__init__.py").is_file():
        return ".".join(parts[:2])
    return "leveret"


def _is_private(module: str) -> bool:
    return any(part.startswith("_") for part in module.split(".")[1:])


def _imports(module: str) -> Iterator[tuple[int, str]]:
    """(line, module) for each leveret module that ``module`` imports."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                base = node.module or ""
            # ``from . import _observe`` imports the module ``_observe``.
            names = [base] + [
                f"{base}.{alias.name}" for alias in node.names if _is_module(f"{base}.{alias.name}")
            ]
        else:
            continue
        for name in names:
            if name == "leveret" or name.startswith("leveret."):
                yield node.lineno, name


def _private_imports_across_packages() -> set[tuple[str, str]]:
    found = set()
    for module in MODULES:
        for _, imported in _imports(module):
            if (
                _is_private(imported)
                and _package(imported) != _package(module)
                and imported != SHARED_LEAF
            ):
                found.add((module, imported))
    return found


def test_no_module_imports_a_private_module_of_another_package() -> None:
    found = sorted(_private_imports_across_packages())
    assert not found, "private modules imported across packages: " + ", ".join(
        f"{module} imports {imported}" for module, imported in found
    )


@pytest.mark.parametrize(
    ("package", "allowed"),
    [
        ("leveret.amqp", {"leveret.amqp", "leveret.exceptions", SHARED_LEAF}),
        (
            "leveret.patterns",
            {"leveret.amqp", "leveret.patterns", "leveret.exceptions", "leveret.serializers"},
        ),
        (
            "leveret.fleet",
            {
                "leveret.amqp",
                "leveret.fleet",
                "leveret.patterns",
                "leveret.exceptions",
                SHARED_LEAF,
            },
        ),
    ],
)
def test_a_lower_layer_imports_nothing_above_it(package: str, allowed: set[str]) -> None:
    breaches = sorted(
        f"{module}:{line} imports {imported}"
        for module in MODULES
        if _package(module) == package
        for line, imported in _imports(module)
        if not any(imported == ok or imported.startswith(ok + ".") for ok in allowed)
    )
    assert not breaches, f"{package} reaches above its layer: {breaches}"


def test_the_checks_see_the_imports_they_are_about() -> None:
    """The walk itself: relative, lazy and ``from . import module`` imports are found."""
    assert any(name == "leveret.amqp" for _, name in _imports("leveret._connect"))  # lazy
    assert any(name == "leveret.testing" for _, name in _imports("leveret._connect"))
    assert any(name == "leveret.amqp._channel" for _, name in _imports("leveret.amqp._robust"))
    assert _package("leveret.amqp._channel") == "leveret.amqp"
    assert _package("leveret.cli") == "leveret"
    assert _package("leveret.fleet._agent") == "leveret.fleet"
    assert _is_private("leveret._connect") and not _is_private("leveret.testing.pytest_plugin")

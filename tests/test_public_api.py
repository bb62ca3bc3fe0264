"""The package facades: everything they import is exported, and exports resolve."""

import importlib
import inspect

import pytest


@pytest.mark.parametrize(
    "package", ["leveret", "leveret.amqp", "leveret.patterns", "leveret.testing"]
)
def test_all_lists_every_public_name_the_facade_imports(package: str) -> None:
    module = importlib.import_module(package)
    exported = set(module.__all__)
    assert len(exported) == len(module.__all__), "duplicates in __all__"
    for name in module.__all__:
        assert hasattr(module, name), f"{package}.__all__ names missing {name!r}"
    imported = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not inspect.ismodule(value)
        and getattr(value, "__module__", "").startswith("leveret")
    }
    assert imported <= exported, f"{package} imports but does not export {imported - exported}"


def test_every_public_exception_lives_in_the_exceptions_module_and_its_tree() -> None:
    import leveret.exceptions
    import leveret.patterns

    tree = leveret.exceptions.__doc__ or ""
    for package in (leveret, leveret.patterns):
        for name in package.__all__:
            value = getattr(package, name)
            if isinstance(value, type) and issubclass(value, BaseException):
                assert value.__module__ == "leveret.exceptions", f"{name} is defined elsewhere"
                assert name in tree, f"{name} is not drawn in leveret.exceptions' docstring"
    assert issubclass(leveret.exceptions.UnroutableError, leveret.exceptions.PublishError)
    assert issubclass(leveret.exceptions.UnroutableError, leveret.exceptions.MessageReturnedError)

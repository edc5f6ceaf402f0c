"""The `engine` fixture: every engine test runs on the compiled engine and the reference.

`engine` is an Engine (its name, its Value class, the compiled module or None, and the
graph sizes to use); `Value` is the same engine's class, for tests that need only that.

With FASTGRAD_PUREPYTHON=1 (or --no-compiled, for a build without the extension) only
the reference runs; `fastgrad.nn` then uses the reference too. With FASTGRAD_SANITIZED=1
(`make check-memory`, under AddressSanitizer) the tests marked `unsanitized` are skipped:
they measure resident memory or limit the address space, which ASan's shadow memory and
quarantine change, or load a library that cannot run under ASan (matplotlib's fonts).
"""
import importlib

import pytest

from fastgrad import reference
from fastgrad._engine import env_flag

PURE = env_flag("FASTGRAD_PUREPYTHON")
SANITIZED = env_flag("FASTGRAD_SANITIZED")


def pytest_addoption(parser):
    parser.addoption("--no-compiled", action="store_true",
                     help="deselect the compiled engine (for a build without the extension)")


def pytest_collection_modifyitems(config, items):
    skip_compiled = pytest.mark.skip(reason="compiled engine deselected")
    skip_sanitized = pytest.mark.skip(reason="cannot run under AddressSanitizer")
    for item in items:
        if "compiled" in item.keywords and (PURE or config.getoption("--no-compiled")):
            item.add_marker(skip_compiled)
        if "unsanitized" in item.keywords and SANITIZED:
            item.add_marker(skip_sanitized)


class Engine:
    """One engine under test."""

    def __init__(self, name):
        self.name = name
        self.compiled = name == "compiled"
        # the compiled module, for its _test_* hooks; None for the reference
        self.core = importlib.import_module("fastgrad._core") if self.compiled else None
        self.Value = self.core.Value if self.compiled else reference.Value
        # nodes in the large-graph tests (the reference is ~100x slower per node)
        self.large = 1_000_000 if self.compiled else 100_000

    def __repr__(self):
        return f"Engine({self.name!r})"


ENGINES = [
    pytest.param("compiled", id="compiled", marks=pytest.mark.compiled),
    pytest.param("reference", id="reference"),
]


@pytest.fixture(scope="session", params=ENGINES)
def engine(request):
    """One engine: compiled or reference."""
    return Engine(request.param)


@pytest.fixture(scope="session")
def Value(engine):
    """The Value class of the engine under test."""
    return engine.Value

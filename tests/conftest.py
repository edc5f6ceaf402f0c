"""The `engine` fixture: every engine test runs on the compiled engine and the reference.

With FASTGRAD_PUREPYTHON=1 (or --no-compiled, for a build without the extension) only
the reference runs; `fastgrad.nn` then uses the reference too.
"""
import os

import pytest

from fastgrad import reference

PURE = bool(os.environ.get("FASTGRAD_PUREPYTHON"))


def pytest_addoption(parser):
    parser.addoption("--no-compiled", action="store_true",
                     help="deselect the compiled engine (for a build without the extension)")


def pytest_collection_modifyitems(config, items):
    if not (PURE or config.getoption("--no-compiled")):
        return
    skip = pytest.mark.skip(reason="compiled engine deselected")
    for item in items:
        if "compiled" in item.keywords:
            item.add_marker(skip)


def _compiled_value():
    from fastgrad._core import Value
    return Value


ENGINES = [
    pytest.param("compiled", id="compiled", marks=pytest.mark.compiled),
    pytest.param("reference", id="reference"),
]


@pytest.fixture(scope="session", params=ENGINES)
def Value(request):
    """The Value class of one engine."""
    return _compiled_value() if request.param == "compiled" else reference.Value


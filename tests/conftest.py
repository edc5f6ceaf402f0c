"""The `engine` fixture: every engine test runs on the compiled engine and the reference.

With FASTGRAD_PUREPYTHON=1 (or --no-compiled, for a build without the extension) only
the reference runs; `fastgrad.nn` then uses the reference too. With FASTGRAD_SANITIZED=1
(`make check-memory`, under AddressSanitizer) the tests marked `unsanitized` are skipped:
they measure resident memory or limit the address space, which ASan's shadow memory and
quarantine change, or load a library that cannot run under ASan (matplotlib's fonts).
"""
import os

import pytest

from fastgrad import reference

PURE = bool(os.environ.get("FASTGRAD_PUREPYTHON"))
SANITIZED = bool(os.environ.get("FASTGRAD_SANITIZED"))


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


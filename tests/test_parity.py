"""The compiled Value exposes what the reference exposes, with the same signatures and
docstrings; and the tests run against the installed package on the engine expected."""
import inspect
import os
import pathlib

import pytest

import fastgrad
from fastgrad import reference
from fastgrad._engine import env_flag

# what a reference Value class defines (its own and its base's names), less the private
# storage (slots and the helpers its operators share): the compiled class must have every name
_STORAGE = set(reference._Handle.__slots__) | {'_node', '_op_node', '_binary', '_topo'}
_DUNDERS = {'__add__', '__radd__', '__mul__', '__rmul__', '__pow__', '__rpow__', '__neg__',
            '__sub__', '__rsub__', '__truediv__', '__rtruediv__', '__abs__', '__repr__',
            '__reduce__', '__init__'}


def public(cls):
    names = {name for klass in cls.__mro__[:-1] for name in vars(klass)}
    return sorted(name for name in names
                  if name not in _STORAGE and (not name.startswith('__') or name in _DUNDERS))


PUBLIC = public(reference.Value)
PUBLIC_GPT = public(reference.GptValue) + ['_children']     # (a slot of the reference's)


def test_public_names_cover_the_reference():
    # every name micrograd users touch, and fastgrad's own additions, are compared
    for name in ('data', 'grad', 'label', '_op', '_prev', '_backward', 'backward', 'relu',
                 'tanh', 'exp', 'log', 'sigmoid', 'sqrt', '__abs__', '__rpow__', 'recompute',
                 '_apply_rule', '_sum_of_products', '_affine'):
        assert name in PUBLIC
    for name in ('data', 'grad', 'backward', 'relu', 'exp', 'log', '__pow__', '__truediv__',
                 '_children', '_local_grads', 'recompute'):
        assert name in PUBLIC_GPT
    # microgpt's Value has none of micrograd's graph attributes
    assert not {'_prev', '_op', 'label', '_backward'} & set(PUBLIC_GPT)


def test_tests_import_the_installed_package():
    here = pathlib.Path(__file__).resolve().parents[1] / "src"
    assert here not in pathlib.Path(fastgrad.__file__).resolve().parents, \
        "tests imported fastgrad from the source tree, not the installed package"


def test_compiled_engine_did_not_silently_fall_back():
    # fails when the extension was expected but not built (the fallback only warns)
    if env_flag("FASTGRAD_PUREPYTHON"):
        assert fastgrad.ENGINE == "reference"
        assert fastgrad.Value is reference.Value
    else:
        from fastgrad import _core
        assert fastgrad.ENGINE == "compiled"
        assert fastgrad.Value is _core.Value
    from fastgrad.engine import Value
    assert Value is fastgrad.Value


@pytest.mark.compiled
@pytest.mark.parametrize("cls, name", [("Value", n) for n in PUBLIC] +
                         [("GptValue", n) for n in PUBLIC_GPT])
def test_same_public_surface(cls, name):
    from fastgrad import _core
    C, R = getattr(_core, cls), getattr(reference, cls)
    assert hasattr(C, name) and hasattr(R, name)
    c, r = getattr(C, name), getattr(R, name)
    if callable(r) and not isinstance(r, property) and r.__doc__:
        assert c.__doc__ and inspect.cleandoc(r.__doc__) in inspect.cleandoc(c.__doc__)


@pytest.mark.compiled
def test_each_api_keeps_to_its_own_names():
    from fastgrad import _core
    for C, R in ((_core.GptValue, reference.GptValue),):
        for name in ('_prev', '_op', 'label', '_backward', '_apply_rule', '_affine'):
            assert not hasattr(C, name) and not hasattr(R, name), name
    assert not hasattr(_core.Value, '_local_grads') and not hasattr(reference.Value, '_local_grads')
    assert not hasattr(_core.Value, '_children')


@pytest.mark.compiled
def test_same_constructor_and_class_doc():
    from fastgrad._core import Value as C
    R = reference.Value
    # embedsignature puts the constructor's signature first, then the same docstring
    signature, doc = C.__doc__.split("\n", 1)
    assert signature == "Value(data, _children=(), _op='', label='')"
    assert doc.strip() == R.__doc__.strip()
    assert str(inspect.signature(R.__init__)) == "(self, data, _children=(), _op='', label='')"
    C(1.0, (), '', label='x')          # the same keywords work


def test_repr_and_identity_semantics(Value):
    v = Value(2.0)
    assert repr(v) == "Value(data=2.0, grad=0.0)"
    w = Value(2.0)
    assert v != w and v == v and len({v, w, v}) == 2     # identity, as in micrograd


def test_missing_extension_falls_back_with_a_warning():
    # a fresh interpreter in which importing the extension fails, as on a machine where it
    # was never built: fastgrad must warn and run on the reference engine
    import subprocess
    import sys
    code = (
        "import sys, warnings\n"
        "sys.modules['fastgrad._core'] = None\n"          # makes `import fastgrad._core` fail
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import fastgrad\n"
        "from fastgrad.engine import Value\n"
        "from fastgrad import reference\n"
        "assert fastgrad.ENGINE == 'reference' and Value is reference.Value\n"
        "assert any('reference engine' in str(x.message) for x in w), [str(x.message) for x in w]\n"
        "y = Value(2.0) * 3.0; y.backward(); print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "FASTGRAD_PUREPYTHON"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.compiled
@pytest.mark.parametrize("setting, chosen", [
    (None, "compiled"), ("", "compiled"), ("0", "compiled"),
    ("1", "reference"), ("yes", "reference"), ("2", "reference")])
def test_pure_python_flag_is_off_when_unset_empty_or_zero(setting, chosen):
    # FASTGRAD_PUREPYTHON=0 asks for the compiled engine, as PYTHONDONTWRITEBYTECODE=0
    # leaves bytecode on: read the way CPython reads its own flags
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "FASTGRAD_PUREPYTHON"}
    if setting is not None:
        env["FASTGRAD_PUREPYTHON"] = setting
    code = "import warnings; warnings.simplefilter('error')\nimport fastgrad\nprint(fastgrad.ENGINE)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.strip() == chosen, out.stderr

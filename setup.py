"""Builds fastgrad's one extension module, fastgrad._core.

Build modes, chosen by environment variables at build time:
  (default)                 compiled engine, Cython directives for speed
  FASTGRAD_CYTHON_DEBUG=1   boundscheck, wraparound and initializedcheck back on, -O0 -g
  FASTGRAD_PUREPYTHON=1     no extension: fastgrad runs on its pure-Python reference engine

Metadata lives in pyproject.toml.
"""
import os

from setuptools import Extension, setup

ext_modules = []
if not os.environ.get("FASTGRAD_PUREPYTHON"):
    from Cython.Build import cythonize

    debug = bool(os.environ.get("FASTGRAD_CYTHON_DEBUG"))
    directives = {
        "language_level": 3,
        "boundscheck": debug,
        "wraparound": debug,
        "initializedcheck": debug,
        "cdivision": True,
        "embedsignature": True,
    }
    ext_modules = cythonize(
        [Extension(
            "fastgrad._core",
            ["src/fastgrad/_core.pyx"],
            # no fused multiply-add: every operation rounds as Python's float arithmetic does
            extra_compile_args=(["-O0", "-g"] if debug else ["-O3"]) + ["-ffp-contract=off"],
        )],
        compiler_directives=directives,
    )

setup(ext_modules=ext_modules)

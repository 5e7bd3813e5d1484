# Bound kernel calls (included by the kernel modules that have them).
#
# A layer that runs the same kernel on same-shaped arrays call after call (Sequential's bound
# evaluation forward) fixes every argument but the input once: the bound call holds the arrays
# and their data pointers, so a call takes one buffer check of the input (0.1 us) instead of a
# typed memoryview per argument (0.5 us each: five of them made up most of a batch-1 layer).

from cpython.buffer cimport (PyBUF_C_CONTIGUOUS, PyBUF_FORMAT, PyBUF_WRITABLE,
                             PyBuffer_Release, PyObject_GetBuffer)


cdef char* _bound_data(object a, Py_ssize_t nbytes, bint dbl, bint writable) except NULL:
    """The data of `a`, a C-contiguous buffer of `nbytes` bytes of float32 (float64 when `dbl`),
    else ValueError. The pointer stays valid while the caller holds `a` (a NumPy array with an
    exported buffer cannot be resized). `nbytes` > 0: bound calls are never made for empty
    arrays."""
    cdef Py_buffer v
    cdef char* p = NULL
    cdef char code = b'd' if dbl else b'f'
    PyObject_GetBuffer(a, &v, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT |
                       (PyBUF_WRITABLE if writable else 0))
    try:
        if v.len == nbytes and v.format != NULL and v.format[0] == code and v.format[1] == 0:
            p = <char*> v.buf
    finally:
        PyBuffer_Release(&v)
    if p == NULL:
        raise ValueError(f"a bound kernel call expects a C-contiguous "
                         f"{'float64' if dbl else 'float32'} array of {nbytes} bytes, got "
                         f"{getattr(a, 'dtype', type(a).__name__)} {getattr(a, 'shape', '')}")
    return p

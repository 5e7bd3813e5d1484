# Bound kernel calls (included by the kernel modules that have them).
#
# A layer that runs the same kernel on same-shaped arrays call after call (Sequential's bound
# evaluation forward) fixes every argument but the input once: the bound call holds the arrays
# and their data pointers, so a call takes one buffer check of the input (0.1 us) instead of a
# typed memoryview per argument (0.5 us each: five of them made up most of a batch-1 layer).

from cpython.buffer cimport (PyBUF_C_CONTIGUOUS, PyBUF_FORMAT, PyBUF_STRIDES, PyBUF_WRITABLE,
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


# Chains of bound calls (Sequential's frozen eval forward): each bound call can describe itself
# as a link, a C function with its fixed state, the bytes it reads and the output it writes, so
# that ``conv.Chain`` runs a whole forward as one loop in C, step after step on the previous
# step's output. The links live inside their bound objects; a chain keeps those alive.

from cpython.pycapsule cimport PyCapsule_New, PyCapsule_GetPointer

ctypedef void (*_link_fn)(void* state, const char* x) noexcept nogil

cdef struct _Link:
    _link_fn fn
    void* state          # the bound object's own arguments (a struct inside it)
    Py_ssize_t x_bytes   # what the step reads
    char* out            # what it writes: the next step's input
    Py_ssize_t out_bytes

cdef object _link_capsule(_Link* link):
    """A capsule of a link (the owner must outlive every use of it)."""
    return PyCapsule_New(<void*> link, b"fastcnn._kernels.chain_link", NULL)

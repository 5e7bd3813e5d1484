"""Element-wise activations (forward and backward), softmax / log-softmax over any axis, and the
fused softmax cross-entropy loss.

The element-wise kernels split the flat arrays into contiguous blocks of BLOCK elements, one per
prange iteration; every output element is written by exactly one iteration and depends only on
its own input element(s), so the loops are race-free and the result does not depend on the thread
count. The arithmetic (vectorised exp/expm1, formulas) is in ``_vmath.h``.
"""

from cython.parallel cimport prange
from cython cimport floating
from libc.math cimport exp, log
from libc.stdint cimport int64_t

include "_bound.pxi"

cdef enum:
    BLOCK = 4096  # elements per prange iteration
    # smaller arrays run their blocks on the calling thread: starting a team costs more than
    # the work (the same blocks, so the same bits)
    PARALLEL_MIN = 32768
    CHUNK = 64    # softmax columns per prange iteration (VM_SOFTMAX_CHUNK in _vmath.h)

cdef extern from "_vmath.h" nogil:
    void vm_unary_double(int op, const double* x, double* y, Py_ssize_t n, double a)
    void vm_unary_float(int op, const float* x, float* y, Py_ssize_t n, double a)
    void vm_binary_double(int op, const double* g, const double* x, double* dx, Py_ssize_t n,
                          double a)
    void vm_binary_float(int op, const float* g, const float* x, float* dx, Py_ssize_t n,
                         double a)
    void vm_softmax_row_double(const double* x, double* y, Py_ssize_t K, int logmode)
    void vm_softmax_row_float(const float* x, float* y, Py_ssize_t K, int logmode)
    void vm_softmax_cols_double(const double* x, double* y, Py_ssize_t K, Py_ssize_t I,
                                Py_ssize_t i0, Py_ssize_t i1, int logmode)
    void vm_softmax_cols_float(const float* x, float* y, Py_ssize_t K, Py_ssize_t I,
                               Py_ssize_t i0, Py_ssize_t i1, int logmode)

# Operation codes (the VM_* enum of _vmath.h).
RELU, LEAKY_RELU, ELU, GELU, GELU_TANH, TANH, SIGMOID, EXP = 0, 1, 2, 3, 4, 5, 6, 7
RELU_B, LEAKY_RELU_B, ELU_B, GELU_B, GELU_TANH_B, TANH_B, SIGMOID_B = 16, 17, 18, 19, 20, 21, 22


cdef inline void _unary_block(int op, const floating* x, floating* y, Py_ssize_t n,
                              double a) noexcept nogil:
    if floating is double:
        vm_unary_double(op, x, y, n, a)
    else:
        vm_unary_float(op, x, y, n, a)


cdef inline void _binary_block(int op, const floating* g, const floating* x, floating* dx,
                               Py_ssize_t n, double a) noexcept nogil:
    if floating is double:
        vm_binary_double(op, g, x, dx, n, a)
    else:
        vm_binary_float(op, g, x, dx, n, a)


def unary(int op,
          const floating[::1] x,   # IN  (size,)
          floating[::1] y,         # OUT (size,) may be x itself (in place)
          double a,
          int n_threads):
    """y = f(x; a) elementwise, f chosen by ``op`` (RELU, LEAKY_RELU with slope a, ELU with
    alpha a, GELU, GELU_TANH, TANH, SIGMOID, EXP); formulas in _vmath.h."""
    if x.shape[0]:
        with nogil:
            _unary(op, &x[0], &y[0], x.shape[0], a, n_threads)


cdef void _unary(int op, const floating* x, floating* y, Py_ssize_t size, double a,
                 int n_threads) noexcept nogil:
    cdef Py_ssize_t n_blocks = (size + BLOCK - 1) // BLOCK
    cdef Py_ssize_t blk
    if n_threads == 1 or size < PARALLEL_MIN:
        for blk in range(n_blocks):
            _unary_block(op, x + blk * BLOCK, y + blk * BLOCK,
                         min(<Py_ssize_t> BLOCK, size - blk * BLOCK), a)
        return
    # Race-free: block blk owns y[blk*BLOCK : (blk+1)*BLOCK].
    for blk in prange(n_blocks, schedule='static', num_threads=n_threads):
        _unary_block(op, x + blk * BLOCK, y + blk * BLOCK,
                     min(<Py_ssize_t> BLOCK, size - blk * BLOCK), a)


cdef class _BoundElementwise:
    """An elementwise kernel with the op, its output array and the thread count fixed; its
    inputs must be C-contiguous arrays of the output's size and dtype (_bound.pxi)."""

    cdef object keep
    cdef char* out
    cdef Py_ssize_t size, nbytes
    cdef int op, n_threads
    cdef bint dbl

    def __init__(self, int op, out, int n_threads):
        if out.size < 1:
            raise ValueError("a bound elementwise call needs a non-empty output")
        self.dbl = out.dtype.itemsize == 8
        self.keep, self.op, self.n_threads, self.size = out, op, n_threads, out.size
        self.out = _bound_data(out, out.nbytes, self.dbl, True)
        self.nbytes = out.nbytes


cdef struct _UnaryLink:
    char* out
    Py_ssize_t size
    double a
    int op, n_threads
    bint dbl


cdef void _link_unary(void* state, const char* x) noexcept nogil:
    cdef _UnaryLink* s = <_UnaryLink*> state
    if s.dbl:
        _unary(s.op, <const double*> x, <double*> s.out, s.size, s.a, s.n_threads)
    else:
        _unary(s.op, <const float*> x, <float*> s.out, s.size, s.a, s.n_threads)


cdef class BoundUnary(_BoundElementwise):
    """``unary`` bound to its output y: ``bound(x, a)``."""

    cdef _UnaryLink ul
    cdef _Link link_

    def link(self, double a):
        """This call with the op's parameter fixed as a chain link (see ``conv.Chain``)."""
        self.ul.out, self.ul.size, self.ul.a = self.out, self.size, a
        self.ul.op, self.ul.n_threads, self.ul.dbl = self.op, self.n_threads, self.dbl
        self.link_.fn, self.link_.state = _link_unary, &self.ul
        self.link_.x_bytes = self.link_.out_bytes = self.nbytes
        self.link_.out = self.out
        return _link_capsule(&self.link_)

    def __call__(self, x, double a):
        cdef const char* xp = _bound_data(x, self.nbytes, self.dbl, False)
        with nogil:
            if self.dbl:
                _unary(self.op, <const double*> xp, <double*> self.out, self.size, a,
                       self.n_threads)
            else:
                _unary(self.op, <const float*> xp, <float*> self.out, self.size, a,
                       self.n_threads)


def binary(int op,
           const floating[::1] g,   # IN  (size,) gradient of the output
           const floating[::1] x,   # IN  (size,) forward input (TANH_B, SIGMOID_B: output)
           floating[::1] dx,        # OUT (size,)
           double a,
           int n_threads):
    """dx = g * f'(x; a) elementwise for the backward ops (RELU_B, ..., SIGMOID_B)."""
    if x.shape[0]:
        with nogil:
            _binary(op, &g[0], &x[0], &dx[0], x.shape[0], a, n_threads)


cdef void _binary(int op, const floating* g, const floating* x, floating* dx, Py_ssize_t size,
                  double a, int n_threads) noexcept nogil:
    cdef Py_ssize_t n_blocks = (size + BLOCK - 1) // BLOCK
    cdef Py_ssize_t blk
    if n_threads == 1 or size < PARALLEL_MIN:
        for blk in range(n_blocks):
            _binary_block(op, g + blk * BLOCK, x + blk * BLOCK, dx + blk * BLOCK,
                          min(<Py_ssize_t> BLOCK, size - blk * BLOCK), a)
        return
    # Race-free: block blk owns dx[blk*BLOCK : (blk+1)*BLOCK].
    for blk in prange(n_blocks, schedule='static', num_threads=n_threads):
        _binary_block(op, g + blk * BLOCK, x + blk * BLOCK, dx + blk * BLOCK,
                      min(<Py_ssize_t> BLOCK, size - blk * BLOCK), a)


cdef class BoundBinary(_BoundElementwise):
    """``binary`` bound to its output dx: ``bound(g, x, a)``."""

    def __call__(self, g, x, double a):
        cdef const char* gp = _bound_data(g, self.nbytes, self.dbl, False)
        cdef const char* xp = _bound_data(x, self.nbytes, self.dbl, False)
        with nogil:
            if self.dbl:
                _binary(self.op, <const double*> gp, <const double*> xp, <double*> self.out,
                        self.size, a, self.n_threads)
            else:
                _binary(self.op, <const float*> gp, <const float*> xp, <float*> self.out,
                        self.size, a, self.n_threads)


cdef inline void _softmax_item(const floating* x, floating* y, Py_ssize_t K, Py_ssize_t I,
                               Py_ssize_t i0, Py_ssize_t i1, int logmode) noexcept nogil:
    if I == 1:
        if floating is double:
            vm_softmax_row_double(x, y, K, logmode)
        else:
            vm_softmax_row_float(x, y, K, logmode)
    elif floating is double:
        vm_softmax_cols_double(x, y, K, I, i0, i1, logmode)
    else:
        vm_softmax_cols_float(x, y, K, I, i0, i1, logmode)


def softmax_forward(const floating[:, :, ::1] x,   # IN  (O, K, I), softmax over K
                    floating[:, :, ::1] y,         # OUT (O, K, I)
                    bint logmode,
                    int n_threads):
    """y[o, :, i] = softmax(x[o, :, i]) (log-softmax when ``logmode``), with the maximum
    subtracted first and the sum of exponentials in double in the order k = 0, 1, ...

    K >= 1. Work items are (o, chunk of CHUNK columns); each owns y[o, :, chunk].
    """
    cdef Py_ssize_t n_outer = x.shape[0], K = x.shape[1], n_inner = x.shape[2]
    cdef Py_ssize_t n_chunks = (n_inner + CHUNK - 1) // CHUNK
    cdef Py_ssize_t item, o, i0
    if n_outer == 0 or n_inner == 0:
        return
    # Race-free: item (o, c) writes only y[o, :, c*CHUNK : (c+1)*CHUNK].
    for item in prange(n_outer * n_chunks, nogil=True, schedule='static', num_threads=n_threads):
        o = item // n_chunks
        i0 = (item % n_chunks) * CHUNK
        _softmax_item(&x[o, 0, 0], &y[o, 0, 0], K, n_inner, i0, min(i0 + CHUNK, n_inner), logmode)


cdef void _softmax_backward_item(const floating* g, const floating* y, floating* dx,
                                 Py_ssize_t K, Py_ssize_t I, Py_ssize_t i0, Py_ssize_t i1,
                                 int logmode) noexcept nogil:
    cdef double acc
    cdef Py_ssize_t i, k
    for i in range(i0, i1):
        acc = 0
        if logmode:
            for k in range(K):
                acc = acc + g[k * I + i]
            for k in range(K):
                dx[k * I + i] = <floating> (g[k * I + i] - exp(<double> y[k * I + i]) * acc)
        else:
            for k in range(K):
                acc = acc + <double> g[k * I + i] * y[k * I + i]
            for k in range(K):
                dx[k * I + i] = <floating> (y[k * I + i] * (g[k * I + i] - acc))


def softmax_backward(const floating[:, :, ::1] g,   # IN  (O, K, I) gradient of the output
                     const floating[:, :, ::1] y,   # IN  (O, K, I) output of the forward pass
                     floating[:, :, ::1] dx,        # OUT (O, K, I)
                     bint logmode,
                     int n_threads):
    """softmax: dx = y * (g - sum_k g*y); log-softmax: dx = g - exp(y) * sum_k g (sums in double,
    in the order k = 0, 1, ...). Items as in softmax_forward."""
    cdef Py_ssize_t n_outer = g.shape[0], K = g.shape[1], n_inner = g.shape[2]
    cdef Py_ssize_t n_chunks = (n_inner + CHUNK - 1) // CHUNK
    cdef Py_ssize_t item, o, i0
    if n_outer == 0 or n_inner == 0 or K == 0:
        return
    # Race-free: item (o, c) writes only dx[o, :, c*CHUNK : (c+1)*CHUNK].
    for item in prange(n_outer * n_chunks, nogil=True, schedule='static', num_threads=n_threads):
        o = item // n_chunks
        i0 = (item % n_chunks) * CHUNK
        _softmax_backward_item(&g[o, 0, 0], &y[o, 0, 0], &dx[o, 0, 0], K, n_inner, i0,
                               min(i0 + CHUNK, n_inner), logmode)


def softmax_cross_entropy(const floating[:, ::1] z,      # IN  (N, K) logits
                          const int64_t[::1] labels,     # IN  (N,) classes, each in [0, K)
                          floating[:, ::1] dz):           # OUT (N, K) gradient of the loss
    """Mean softmax cross-entropy and its gradient, stable for logits of any size.

    p = softmax(z - max(z)) row by row; loss = -(1/N) sum_n log p[n, t_n], accumulated in double
    precision in the order n = 0, 1, ...; dz = (p - onehot(t)) / N. Serial: the arrays are small
    (a batch of 10-way logits) and a parallel region would cost more than the work.
    """
    cdef Py_ssize_t N = z.shape[0], K = z.shape[1], n, k
    cdef double total = 0, m, s
    cdef const floating* zr
    cdef floating* gr
    with nogil:
        for n in range(N):
            zr = &z[n, 0]
            gr = &dz[n, 0]
            m = zr[0]
            for k in range(1, K):
                if zr[k] > m or zr[k] != zr[k]:  # NaN propagates
                    m = zr[k]
            s = 0
            for k in range(K):
                s = s + exp(zr[k] - m)
            total = total + log(s) - (zr[labels[n]] - m)
            for k in range(K):
                gr[k] = <floating> (exp(zr[k] - m) / s / N)
            gr[labels[n]] = gr[labels[n]] - <floating> (1.0 / N)
    return total / N

"""ReLU forward and backward, and the softmax cross-entropy loss.

Each call splits the flat arrays into contiguous blocks, one per prange iteration; every output
element is written by exactly one iteration, so the loops are race-free and the result does not
depend on the thread count.
"""

from cython.parallel cimport prange
from cython cimport floating
from libc.math cimport exp, log
from libc.stdint cimport int64_t

cdef enum:
    BLOCK = 4096  # elements per prange iteration


# The loops work on raw pointers: a store through a memoryview could alias the view's own data
# pointer as far as the C compiler knows, which would stop it from vectorising.

cdef inline void _relu_block(const floating* x, floating* y, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t k
    cdef floating v
    for k in range(n):
        v = x[k]
        y[k] = 0 if v < 0 else v  # NaN < 0 is false: NaN is kept


cdef inline void _relu_backward_block(const floating* dy, const floating* x, floating* dx,
                                      Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t k
    for k in range(n):
        dx[k] = dy[k] if x[k] > 0 else 0


def relu_forward(const floating[::1] x,   # IN  (size,)
                 floating[::1] y,         # OUT (size,)
                 int n_threads):
    """y = max(x, 0) elementwise; NaN propagates."""
    cdef Py_ssize_t size = x.shape[0]
    cdef Py_ssize_t n_blocks = (size + BLOCK - 1) // BLOCK
    cdef Py_ssize_t blk
    if size == 0:
        return
    # Race-free: block blk owns y[blk*BLOCK : (blk+1)*BLOCK].
    for blk in prange(n_blocks, nogil=True, schedule='static', num_threads=n_threads):
        _relu_block(&x[blk * BLOCK], &y[blk * BLOCK], min(<Py_ssize_t> BLOCK, size - blk * BLOCK))


def relu_backward(const floating[::1] dy,  # IN  (size,) gradient of the output
                  const floating[::1] x,   # IN  (size,) input of the forward pass (or its output)
                  floating[::1] dx,        # OUT (size,)
                  int n_threads):
    """dx = dy * (x > 0)."""
    cdef Py_ssize_t size = x.shape[0]
    cdef Py_ssize_t n_blocks = (size + BLOCK - 1) // BLOCK
    cdef Py_ssize_t blk
    if size == 0:
        return
    # Race-free: block blk owns dx[blk*BLOCK : (blk+1)*BLOCK].
    for blk in prange(n_blocks, nogil=True, schedule='static', num_threads=n_threads):
        _relu_backward_block(&dy[blk * BLOCK], &x[blk * BLOCK], &dx[blk * BLOCK],
                             min(<Py_ssize_t> BLOCK, size - blk * BLOCK))


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

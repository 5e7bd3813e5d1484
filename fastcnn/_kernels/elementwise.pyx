"""ReLU forward and backward.

Each call splits the flat arrays into contiguous blocks, one per prange iteration; every output
element is written by exactly one iteration, so the loops are race-free and the result does not
depend on the thread count.
"""

from cython.parallel cimport prange
from cython cimport floating

cdef enum:
    BLOCK = 4096  # elements per prange iteration


def relu_forward(const floating[::1] x,   # IN  (size,)
                 floating[::1] y,         # OUT (size,)
                 int n_threads):
    """y = max(x, 0); NaN propagates (NaN > 0 is false, so NaN is kept by the select)."""
    cdef Py_ssize_t size = x.shape[0]
    cdef Py_ssize_t n_blocks = (size + BLOCK - 1) // BLOCK
    cdef Py_ssize_t blk, k, end
    cdef floating v
    # Race-free: block blk owns y[blk*BLOCK : (blk+1)*BLOCK].
    for blk in prange(n_blocks, nogil=True, schedule='static', num_threads=n_threads):
        end = min((blk + 1) * BLOCK, size)
        for k in range(blk * BLOCK, end):
            v = x[k]
            y[k] = 0 if v < 0 else v


def relu_backward(const floating[::1] dy,  # IN  (size,) gradient of the output
                  const floating[::1] x,   # IN  (size,) input of the forward pass (or its output)
                  floating[::1] dx,        # OUT (size,)
                  int n_threads):
    """dx = dy * (x > 0)."""
    cdef Py_ssize_t size = x.shape[0]
    cdef Py_ssize_t n_blocks = (size + BLOCK - 1) // BLOCK
    cdef Py_ssize_t blk, k, end
    # Race-free: block blk owns dx[blk*BLOCK : (blk+1)*BLOCK].
    for blk in prange(n_blocks, nogil=True, schedule='static', num_threads=n_threads):
        end = min((blk + 1) * BLOCK, size)
        for k in range(blk * BLOCK, end):
            dx[k] = dy[k] if x[k] > 0 else 0

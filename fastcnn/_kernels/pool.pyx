"""Max-pooling forward (caching the argmax) and backward (scattering through it).

Shapes (NCHW, C-contiguous, validated by ``fastcnn.functional``):

    x, dx  (N, C, H, W)      y, dy, argmax  (N, C, OH, OW)
    OH = (H + 2*ph - kh) // sh + 1            OW = (W + 2*pw - kw) // sw + 1

Padding acts as -inf, so it is never the maximum; padding of at most half the window guarantees
every window holds at least one real element.
"""

from cython.parallel cimport prange
from cython cimport floating
from libc.stdint cimport int64_t
from libc.string cimport memset


include "_pool_plane.pxi"


def maxpool2d_forward(const floating[:, :, :, ::1] x,  # IN  (N, C, H, W)
                      floating[:, :, :, ::1] y,        # OUT (N, C, OH, OW)
                      int64_t[:, :, :, ::1] argmax,    # OUT (N, C, OH, OW) flat index u*W+v
                      Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                      Py_ssize_t ph, Py_ssize_t pw, int n_threads):
    """y[n,c,i,j] = max of the window; argmax[n,c,i,j] = u*W + v of that maximum in x[n,c].

    Ties go to the first element in row-major order; a NaN is the maximum (the first NaN wins).
    Parallel over (n, c) planes: each task owns y[n, c] and argmax[n, c].
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t OH = y.shape[2], OW = y.shape[3]
    cdef Py_ssize_t plane
    # Race-free: plane (n, c) writes only y[n, c] and argmax[n, c].
    for plane in prange(N * C, nogil=True, schedule='static', num_threads=n_threads):
        _pool_plane(&x[plane // C, plane % C, 0, 0], &y[plane // C, plane % C, 0, 0],
                    &argmax[plane // C, plane % C, 0, 0], H, W, OH, OW, kh, kw, sh, sw, ph, pw)


cdef inline void _scatter_plane(const floating* g, const int64_t* a, const floating* y,
                                floating* d, Py_ssize_t in_size,
                                Py_ssize_t out_size) noexcept nogil:
    """d (in_size) = 0, then d[a[k]] += g[k] for k in row-major order, where y[k] > 0 when a
    pooled output y is given (NULL: no ReLU mask)."""
    cdef Py_ssize_t k
    memset(d, 0, in_size * sizeof(floating))
    for k in range(out_size):
        if y == NULL or y[k] > 0:
            d[a[k]] = d[a[k]] + g[k]


def maxpool2d_backward(const floating[:, :, :, ::1] dy,    # IN  (N, C, OH, OW)
                       const int64_t[:, :, :, ::1] argmax,  # IN  (N, C, OH, OW), each in [0, H*W)
                       floating[:, :, :, ::1] dx,          # OUT (N, C, H, W)
                       int n_threads):
    """dx[n,c].flat[argmax[n,c,i,j]] += dy[n,c,i,j]; overlapping windows add up.

    Parallel over (n, c) planes: each task owns dx[n, c] and adds in row-major order of (i, j).
    """
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t OH = dy.shape[2], OW = dy.shape[3]
    cdef Py_ssize_t plane
    # Race-free: plane (n, c) writes only dx[n, c].
    for plane in prange(N * C, nogil=True, schedule='static', num_threads=n_threads):
        _scatter_plane(&dy[plane // C, plane % C, 0, 0], &argmax[plane // C, plane % C, 0, 0],
                       NULL, &dx[plane // C, plane % C, 0, 0], H * W, OH * OW)


def maxpool2d_relu_backward(const floating[:, :, :, ::1] dy,    # IN  (N, C, OH, OW)
                            const int64_t[:, :, :, ::1] argmax,  # IN  (N, C, OH, OW)
                            const floating[:, :, :, ::1] y,     # IN  (N, C, OH, OW) pooled output
                            floating[:, :, :, ::1] dx,          # OUT (N, C, H, W)
                            int n_threads):
    """Gradient through ReLU then max-pool: dx[n,c].flat[argmax] += dy * (y > 0).

    y is the pooled output of ReLU'd values, so y > 0 exactly where the ReLU passed the maximum
    on; the ReLU's own mask is never needed. Parallel over (n, c) planes, as maxpool2d_backward.
    """
    cdef Py_ssize_t N = dx.shape[0], C = dx.shape[1], H = dx.shape[2], W = dx.shape[3]
    cdef Py_ssize_t OH = dy.shape[2], OW = dy.shape[3]
    cdef Py_ssize_t plane
    # Race-free: plane (n, c) writes only dx[n, c].
    for plane in prange(N * C, nogil=True, schedule='static', num_threads=n_threads):
        _scatter_plane(&dy[plane // C, plane % C, 0, 0], &argmax[plane // C, plane % C, 0, 0],
                       &y[plane // C, plane % C, 0, 0], &dx[plane // C, plane % C, 0, 0],
                       H * W, OH * OW)

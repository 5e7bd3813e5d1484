# Max-pooling of one plane, shared by pool.pyx and by the fused conv + ReLU + pool forward in
# conv.pyx (included textually by both; it needs `floating` and `int64_t` cimported).

cdef extern from "_microkernels.h" nogil:
    # 2x2 / stride 2 max-pooling of a NaN-free plane (returns 0 and does nothing otherwise).
    int fc_pool2x2_f(const float* x, Py_ssize_t H, Py_ssize_t W, float* y, int64_t* am,
                     Py_ssize_t OH, Py_ssize_t OW)
    int fc_pool2x2_d(const double* x, Py_ssize_t H, Py_ssize_t W, double* y, int64_t* am,
                     Py_ssize_t OH, Py_ssize_t OW)


cdef inline bint _wins(floating val, floating best) noexcept nogil:
    """True when val replaces best as the maximum: it is larger, or it is the first NaN."""
    return (val > best) | ((val != val) & (best == best))


cdef inline void _pool_plane(const floating* x, floating* y, int64_t* am,
                             Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW,
                             Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                             Py_ssize_t ph, Py_ssize_t pw) noexcept nogil:
    """Max-pool one (H, W) plane into (OH, OW), with the flat index of each maximum."""
    cdef Py_ssize_t i, j, u, v, u0, u1, v0, v1, best_k
    cdef floating best, val
    cdef int done = 0
    if kh == 2 and kw == 2 and sh == 2 and sw == 2 and ph == 0 and pw == 0:
        # The common LeNet window has a branch-free path for planes without NaN.
        if floating is float:
            done = fc_pool2x2_f(x, H, W, y, am, OH, OW)
        else:
            done = fc_pool2x2_d(x, H, W, y, am, OH, OW)
        if done:
            return
    for i in range(OH):
        u0 = max(i * sh - ph, 0)
        u1 = min(i * sh - ph + kh, H)
        for j in range(OW):
            v0 = max(j * sw - pw, 0)
            v1 = min(j * sw - pw + kw, W)
            best_k = u0 * W + v0
            best = x[best_k]
            for u in range(u0, u1):
                for v in range(v0, v1):
                    val = x[u * W + v]
                    # Strict '>' keeps the first of equal values; once best is NaN nothing
                    # replaces it, and a NaN replaces any number.
                    if _wins(val, best):
                        best = val
                        best_k = u * W + v
            y[i * OW + j] = best
            am[i * OW + j] = best_k

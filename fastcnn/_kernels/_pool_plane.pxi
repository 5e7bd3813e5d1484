# The exact 2x2 max-pool passes' helpers and the window scan (included textually by pool.pyx;
# it needs `floating` and `int64_t` cimported).

cdef extern from *:
    """
    #include <stddef.h>
    #include <stdint.h>
    /* The exact 2x2 / stride 2 max-pool passes (fpg_max2 in pool.pyx, with or without the
       argmax), NaN-aware and branch free, over a block of output rows:
       1. vertical: for each pair of input rows and each of the 2*OW used columns, the winner of
          the upper tap a and the lower tap c (c wins when larger or the first NaN), kept with
          its flat index in the plane (int32);
       2. horizontal, one flat loop over the block's outputs (no per-row tails): the right
          winner R (from b, d) replaces the left L (from a, c) when it ranks higher (larger, or
          NaN against a number) or ranks the same (equal, or both NaN) and comes first in
          row-major order (only b before c can happen).
       This is exactly the row-major scan of the window (ties keep the first element, the first
       NaN wins), so results are bitwise those of the scalar loop. Pass 1 runs whole vectors
       on every row pair but the plane's last, so short rows have no scalar tails. */
    #include <string.h>
    /* w ? b : a on the bits, so that gcc cannot turn the select into a (mispredicted) branch in
       the scalar tails of short rows. */
    static inline float fpp_sel_f(int w, float b, float a) {
        uint32_t ub, ua, m = (uint32_t)0 - (uint32_t)w; float r;
        memcpy(&ub, &b, 4); memcpy(&ua, &a, 4); ub = (ub & m) | (ua & ~m); memcpy(&r, &ub, 4);
        return r;
    }
    static inline double fpp_sel_d(int w, double b, double a) {
        uint64_t ub, ua, m = (uint64_t)0 - (uint64_t)w; double r;
        memcpy(&ub, &b, 8); memcpy(&ua, &a, 8); ub = (ub & m) | (ua & ~m); memcpy(&r, &ub, 8);
        return r;
    }
    #define FPP_CAP 512
    #define FPP_WINS(v, b) (((v) > (b)) | (((v) != (v)) & ((b) == (b))))
    """
    const int FPP_CAP  # longest row pair (2*OW values) of the 2x2 kernels' scratch


cdef inline bint _wins(floating val, floating best) noexcept nogil:
    """True when val replaces best as the maximum: it is larger, or it is the first NaN."""
    return (val > best) | ((val != val) & (best == best))


cdef inline void _pool_plane(const floating* x, floating* y, int64_t* am,
                             Py_ssize_t H, Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW,
                             Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                             Py_ssize_t ph, Py_ssize_t pw) noexcept nogil:
    """Max-pool one (H, W) plane into (OH, OW), with the flat index of each maximum: the
    row-major scan of every window (the 2x2 path's fallback for rows the exact passes' scratch
    does not hold)."""
    cdef Py_ssize_t i, j, u, v, u0, u1, v0, v1, best_k
    cdef floating best, val
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

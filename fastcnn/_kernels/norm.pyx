"""Batch normalisation forward and backward (formulas: DESIGN.md section 3).

Arrays are viewed as ``(N, C, S)``: ``S = H*W`` for BatchNorm2d, ``L`` or 1 for BatchNorm1d. Each
channel ``c`` is reduced over ``(n, s)``, ``m = N*S`` values.

Parallel scheme: ``prange`` over channels; a thread owns every output element of its channels
(``y[:, c, :]``, ``dx[:, c, :]``) and the per-channel statistics, so no two iterations write the
same memory. Each channel is processed start to finish by its thread (statistics pass, then the
element pass), so the second pass usually reads the channel's data from cache (it walks the rows
in reverse, starting from those the first pass read last).

Summation order: per channel, the data is cut into blocks: rows of ``2*S <= BLOCK`` values are
grouped ``BLOCK // S`` whole rows to a block (in ``n`` order, so the lanes are reduced once per
block, not once per short row); longer ``(n, c)`` rows are split into blocks of at most ``BLOCK``
values. Within a block the sums run in vector lanes of the input
type in an order fixed by the block length (see the C helpers below: blocked partial sums, each
lane adding at most ~BLOCK/32 terms); block results are float64. The forward statistics are the
block mean and the sum of squared deviations from it (two reads of a block that sits in L1), merged
block after block in ``n`` order with Chan et al.'s pairwise update; the gradient sums are added
block after block in float64. Every order is fixed by the shapes alone, so results are bitwise
identical for any thread count.
"""

from cython.parallel cimport prange
from cython cimport floating
from libc.math cimport sqrt

cdef enum:
    BLOCK = 1024  # values per block of the statistics pass
    # Rows of one channel sit C*S values apart, each a short stream (196 bytes at 7x7, 784 at
    # 14x14) that the hardware prefetchers do not follow, so the first pass over a channel
    # waited on one cache miss after another (BN backward at 64x64x14x14 read at ~6 GB/s, 8x
    # the time of a copy). It now prefetches the row PF_BYTES ahead (at least one row); 4096
    # measured best of 1024-8192 (backward 64x16x28x28: 4.0x -> 1.5-2.3x the copy).
    PF_BYTES = 4096


cdef enum:
    # When a channel's N*S values take at least SPLIT_BYTES, the element pass (y, dx) runs
    # after the statistics of every channel, in memory order (parallel over samples): a
    # channel's rows, C*S values apart, are short streams on as many pages, and writing them
    # channel by channel left the stores waiting on misses (backward 64x16x28x28: 3.9x -> 2.8x
    # the time of a copy, same-round A/B; forward 28x28 and 32x14x14 gained 5-20%). Smaller
    # channels stay in L1 between the passes and keep the one-channel-at-a-time order (7x7:
    # memory order was up to 1.9x slower there). The backward pass keeps the channel sums on
    # the stack, so it splits only up to SPLIT_MAX_C channels. Results are the same either way.
    SPLIT_BYTES = 32768
    SPLIT_MAX_C = 1024


cdef inline Py_ssize_t _pf_dist(Py_ssize_t S, Py_ssize_t itemsize) noexcept nogil:
    """Rows to prefetch ahead: PF_BYTES worth of rows of S values, at least one."""
    return max(<Py_ssize_t> 1, PF_BYTES // max(<Py_ssize_t> 1, S * itemsize))


cdef inline void _prefetch_rows(const void* p, Py_ssize_t rows, Py_ssize_t stride_bytes,
                                Py_ssize_t row_bytes) noexcept nogil:
    """Prefetch rows [0, rows) of row_bytes bytes, stride_bytes apart, from p."""
    cdef Py_ssize_t r
    for r in range(rows):
        nl_prefetch(<const char*> p + r * stride_bytes, row_bytes)


# The lane sums, written with GCC/Clang vector extensions so that they are vectorised on every
# build (the scalar form of these loops is not: without -ffast-math the compiler may not reorder
# the additions). Four accumulator vectors of L lanes (L = 8 floats or 4 doubles, 32 bytes) take
# 4L consecutive values per step, then single vectors take the rest in steps of L, then a scalar
# takes the last < L values; the accumulators are added in a fixed tree, the lanes converted to
# float64 and added in a fixed tree. The order depends only on n, on every instruction set.
# float32 input is summed in float32 lanes over blocks of at most BLOCK values (each lane adds at
# most BLOCK/32 + a few terms) and the block results in float64: the "blocked partial sums".
# Deviations are taken from the block mean rounded to the input type (exact subtraction of nearby
# values), and the rounding of that centre is corrected for in float64.
cdef extern from *:
    """
    #include <stddef.h>
    #include <string.h>
    typedef float nl_vf __attribute__((vector_size(32)));
    typedef double nl_vd __attribute__((vector_size(32)));
    static inline nl_vf nl_load_f(const float *p) { nl_vf v; memcpy(&v, p, 32); return v; }
    static inline nl_vd nl_load_d(const double *p) { nl_vd v; memcpy(&v, p, 32); return v; }
    static inline double nl_lanes_f(nl_vf s) {
        return (((double)s[0] + s[1]) + ((double)s[2] + s[3]))
             + (((double)s[4] + s[5]) + ((double)s[6] + s[7]));
    }
    static inline double nl_lanes_d(nl_vd s) { return (s[0] + s[1]) + (s[2] + s[3]); }
    /* Ask for the cache lines of p[0:bytes] ahead of use (never faults; no effect on results). */
    static inline void nl_prefetch(const void *p, ptrdiff_t bytes) {
        const char *c = (const char *)p;
        if (bytes <= 0) return;
        for (ptrdiff_t b = 0; b < bytes; b += 64) __builtin_prefetch(c + b, 0, 3);
        __builtin_prefetch(c + bytes - 1, 0, 3);
    }
    /* Rows r < pf_rows exist at p + r*stride; row r + pf_dist is prefetched when row r is read. */
    #define NL_AHEAD(T, p, r, stride, S, pf_rows, pf_dist)                                    \
        if ((r) + (pf_dist) < (pf_rows))                                                      \
            nl_prefetch((p) + (pf_dist) * (stride), (S) * (ptrdiff_t)sizeof(T))
    #define NL_DEFINE(SUF, T, V, L)                                                           \
    /* sum(p[0:n]) */                                                                         \
    static double nl_sum_##SUF(const T *p, ptrdiff_t n) {                                     \
        V a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}; T t = 0; ptrdiff_t k = 0;                   \
        for (; k + 4 * L <= n; k += 4 * L) {                                                  \
            a0 += nl_load_##SUF(p + k); a1 += nl_load_##SUF(p + k + L);                       \
            a2 += nl_load_##SUF(p + k + 2 * L); a3 += nl_load_##SUF(p + k + 3 * L);           \
        }                                                                                     \
        for (; k + L <= n; k += L) a0 += nl_load_##SUF(p + k);                                \
        for (; k < n; k++) t += p[k];                                                         \
        return nl_lanes_##SUF((a0 + a1) + (a2 + a3)) + (double)t;                             \
    }                                                                                         \
    /* sum((p[0:n] - c)^2) */                                                                 \
    static double nl_sumsq_##SUF(const T *p, ptrdiff_t n, T c) {                              \
        V a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, d0, d1, d2, d3; T t = 0, e; ptrdiff_t k = 0;\
        for (; k + 4 * L <= n; k += 4 * L) {                                                  \
            d0 = nl_load_##SUF(p + k) - c; d1 = nl_load_##SUF(p + k + L) - c;                 \
            d2 = nl_load_##SUF(p + k + 2 * L) - c; d3 = nl_load_##SUF(p + k + 3 * L) - c;     \
            a0 += d0 * d0; a1 += d1 * d1; a2 += d2 * d2; a3 += d3 * d3;                       \
        }                                                                                     \
        for (; k + L <= n; k += L) { d0 = nl_load_##SUF(p + k) - c; a0 += d0 * d0; }          \
        for (; k < n; k++) { e = p[k] - c; t += e * e; }                                      \
        return nl_lanes_##SUF((a0 + a1) + (a2 + a3)) + (double)t;                             \
    }                                                                                         \
    /* *sg = sum(g[0:n]), *sgx = sum(g[0:n] * (x[0:n] - c)) */                                \
    static void nl_gsum_##SUF(const T *g, const T *x, ptrdiff_t n, T c, double *sg,           \
                              double *sgx) {                                                  \
        V a0 = {0}, a1 = {0}, b0 = {0}, b1 = {0}, g0, g1; T t = 0, u = 0; ptrdiff_t k = 0;    \
        for (; k + 2 * L <= n; k += 2 * L) {                                                  \
            g0 = nl_load_##SUF(g + k); g1 = nl_load_##SUF(g + k + L);                         \
            a0 += g0; a1 += g1;                                                               \
            b0 += g0 * (nl_load_##SUF(x + k) - c); b1 += g1 * (nl_load_##SUF(x + k + L) - c); \
        }                                                                                     \
        for (; k + L <= n; k += L) {                                                          \
            g0 = nl_load_##SUF(g + k); a0 += g0; b0 += g0 * (nl_load_##SUF(x + k) - c);       \
        }                                                                                     \
        for (; k < n; k++) { t += g[k]; u += g[k] * (x[k] - c); }                             \
        *sg = nl_lanes_##SUF(a0 + a1) + (double)t;                                            \
        *sgx = nl_lanes_##SUF(b0 + b1) + (double)u;                                           \
    }
    /* The same sums over `rows` rows of S values, row r at p + r*stride, as one block: the
       accumulators carry over from row to row (each row: steps of 4L, then L, then scalars
       into t), and the lanes are added once per block, so short rows cost no reduction each. */
    #define NL_DEFINE_ROWS(SUF, T, V, L)                                                      \
    static double nl_sum_rows_##SUF(const T *p, ptrdiff_t rows, ptrdiff_t stride,             \
                                    ptrdiff_t S, ptrdiff_t pf_rows, ptrdiff_t pf_dist) {      \
        V a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}; double t = 0;                                 \
        for (ptrdiff_t r = 0; r < rows; r++, p += stride) {                                   \
            ptrdiff_t k = 0;                                                                  \
            NL_AHEAD(T, p, r, stride, S, pf_rows, pf_dist);                                   \
            for (; k + 4 * L <= S; k += 4 * L) {                                              \
                a0 += nl_load_##SUF(p + k); a1 += nl_load_##SUF(p + k + L);                   \
                a2 += nl_load_##SUF(p + k + 2 * L); a3 += nl_load_##SUF(p + k + 3 * L);       \
            }                                                                                 \
            for (; k + L <= S; k += L) a1 += nl_load_##SUF(p + k);                            \
            for (; k < S; k++) t += (double)p[k];                                                  \
        }                                                                                     \
        return nl_lanes_##SUF((a0 + a1) + (a2 + a3)) + t;                             \
    }                                                                                         \
    static double nl_sumsq_rows_##SUF(const T *p, ptrdiff_t rows, ptrdiff_t stride,           \
                                      ptrdiff_t S, T c) {                                     \
        V a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, d0, d1, d2, d3; double t = 0; T e;              \
        for (ptrdiff_t r = 0; r < rows; r++, p += stride) {                                   \
            ptrdiff_t k = 0;                                                                  \
            for (; k + 4 * L <= S; k += 4 * L) {                                              \
                d0 = nl_load_##SUF(p + k) - c; d1 = nl_load_##SUF(p + k + L) - c;             \
                d2 = nl_load_##SUF(p + k + 2 * L) - c; d3 = nl_load_##SUF(p + k + 3 * L) - c; \
                a0 += d0 * d0; a1 += d1 * d1; a2 += d2 * d2; a3 += d3 * d3;                   \
            }                                                                                 \
            for (; k + L <= S; k += L) { d0 = nl_load_##SUF(p + k) - c; a1 += d0 * d0; }      \
            for (; k < S; k++) { e = p[k] - c; t += (double)(e * e); }                            \
        }                                                                                     \
        return nl_lanes_##SUF((a0 + a1) + (a2 + a3)) + t;                             \
    }                                                                                         \
    static void nl_gsum_rows_##SUF(const T *g, const T *x, ptrdiff_t rows, ptrdiff_t stride,  \
                                   ptrdiff_t S, T c, double *sg, double *sgx,                 \
                                   ptrdiff_t pf_rows, ptrdiff_t pf_dist) {                    \
        V a0 = {0}, a1 = {0}, b0 = {0}, b1 = {0}, g0, g1; double t = 0, u = 0;                  \
        for (ptrdiff_t r = 0; r < rows; r++, g += stride, x += stride) {                      \
            ptrdiff_t k = 0;                                                                  \
            NL_AHEAD(T, g, r, stride, S, pf_rows, pf_dist);                                   \
            NL_AHEAD(T, x, r, stride, S, pf_rows, pf_dist);                                   \
            for (; k + 2 * L <= S; k += 2 * L) {                                              \
                g0 = nl_load_##SUF(g + k); g1 = nl_load_##SUF(g + k + L);                     \
                a0 += g0; a1 += g1;                                                           \
                b0 += g0 * (nl_load_##SUF(x + k) - c);                                        \
                b1 += g1 * (nl_load_##SUF(x + k + L) - c);                                    \
            }                                                                                 \
            for (; k + L <= S; k += L) {                                                      \
                g0 = nl_load_##SUF(g + k); a1 += g0; b1 += g0 * (nl_load_##SUF(x + k) - c);   \
            }                                                                                 \
            for (; k < S; k++) { t += (double)g[k]; u += (double)(g[k] * (x[k] - c)); }           \
        }                                                                                     \
        *sg = nl_lanes_##SUF(a0 + a1) + t;                                            \
        *sgx = nl_lanes_##SUF(b0 + b1) + u;                                           \
    }
    NL_DEFINE(f, float, nl_vf, 8)
    NL_DEFINE(d, double, nl_vd, 4)
    NL_DEFINE_ROWS(f, float, nl_vf, 8)
    NL_DEFINE_ROWS(d, double, nl_vd, 4)
    """
    void nl_prefetch(const void* p, Py_ssize_t nbytes) noexcept nogil
    double nl_sum_rows_f(const float* p, Py_ssize_t rows, Py_ssize_t stride,
                         Py_ssize_t S, Py_ssize_t pf_rows, Py_ssize_t pf_dist) noexcept nogil
    double nl_sum_rows_d(const double* p, Py_ssize_t rows, Py_ssize_t stride,
                         Py_ssize_t S, Py_ssize_t pf_rows, Py_ssize_t pf_dist) noexcept nogil
    double nl_sumsq_rows_f(const float* p, Py_ssize_t rows, Py_ssize_t stride, Py_ssize_t S,
                           float c) noexcept nogil
    double nl_sumsq_rows_d(const double* p, Py_ssize_t rows, Py_ssize_t stride, Py_ssize_t S,
                           double c) noexcept nogil
    void nl_gsum_rows_f(const float* g, const float* x, Py_ssize_t rows, Py_ssize_t stride,
                        Py_ssize_t S, float c, double* sg, double* sgx, Py_ssize_t pf_rows,
                        Py_ssize_t pf_dist) noexcept nogil
    void nl_gsum_rows_d(const double* g, const double* x, Py_ssize_t rows, Py_ssize_t stride,
                        Py_ssize_t S, double c, double* sg, double* sgx, Py_ssize_t pf_rows,
                        Py_ssize_t pf_dist) noexcept nogil
    double nl_sum_f(const float* p, Py_ssize_t n) noexcept nogil
    double nl_sum_d(const double* p, Py_ssize_t n) noexcept nogil
    double nl_sumsq_f(const float* p, Py_ssize_t n, float c) noexcept nogil
    double nl_sumsq_d(const double* p, Py_ssize_t n, double c) noexcept nogil
    void nl_gsum_f(const float* g, const float* x, Py_ssize_t n, float c,
                   double* sg, double* sgx) noexcept nogil
    void nl_gsum_d(const double* g, const double* x, Py_ssize_t n, double c,
                   double* sg, double* sgx) noexcept nogil


cdef inline double _lane_sum(const floating* p, Py_ssize_t n) noexcept nogil:
    """sum(p[0:n]) (n <= BLOCK), lanes in a fixed order."""
    if floating is float:
        return nl_sum_f(p, n)
    else:
        return nl_sum_d(p, n)


cdef inline double _lane_sumsq(const floating* p, Py_ssize_t n, floating c) noexcept nogil:
    """sum((p[0:n] - c)**2) (n <= BLOCK), lanes in a fixed order."""
    if floating is float:
        return nl_sumsq_f(p, n, c)
    else:
        return nl_sumsq_d(p, n, c)


cdef inline void _lane_grad_sums(const floating* g, const floating* p, Py_ssize_t n, double mu,
                                 double* sg, double* sgx) noexcept nogil:
    """sg += sum(g), sgx += sum(g * (p - mu)) over n values: blocks of at most BLOCK, each
    summed in lanes with the centre c = mu rounded to the input type, then corrected in float64
    (sum g*(p - mu) = sum g*(p - c) + (c - mu) * sum g) and added in block order."""
    cdef Py_ssize_t s = 0, len_, blk = BLOCK
    cdef double bg, bgx
    cdef floating c = <floating> mu
    while s < n:
        len_ = min(blk, n - s)
        if floating is float:
            nl_gsum_f(g + s, p + s, len_, c, &bg, &bgx)
        else:
            nl_gsum_d(g + s, p + s, len_, c, &bg, &bgx)
        sg[0] = sg[0] + bg
        sgx[0] = sgx[0] + (bgx + (c - mu) * bg)
        s = s + len_


cdef inline void _rows_grad_sums(const floating* g, const floating* p, Py_ssize_t N,
                                 Py_ssize_t S, Py_ssize_t stride, double mu, double* sg,
                                 double* sgx) noexcept nogil:
    """_lane_grad_sums over N short rows (2*S <= BLOCK) at g/p + n*stride: blocks of whole
    rows (at most BLOCK values), one lane reduction per block, added in row order."""
    cdef Py_ssize_t n = 0, rows, group = BLOCK // S
    cdef Py_ssize_t dist = _pf_dist(S, sizeof(floating))
    cdef double bg, bgx
    cdef floating c = <floating> mu
    _prefetch_rows(g, min(dist, N), stride * sizeof(floating), S * sizeof(floating))
    _prefetch_rows(p, min(dist, N), stride * sizeof(floating), S * sizeof(floating))
    while n < N:
        rows = min(group, N - n)
        if floating is float:
            nl_gsum_rows_f(g + n * stride, p + n * stride, rows, stride, S, c, &bg, &bgx,
                           N - n, dist)
        else:
            nl_gsum_rows_d(g + n * stride, p + n * stride, rows, stride, S, c, &bg, &bgx,
                           N - n, dist)
        sg[0] = sg[0] + bg
        sgx[0] = sgx[0] + (bgx + (c - mu) * bg)
        n = n + rows


cdef inline void _scale_shift(const floating* x, floating* y, Py_ssize_t n, floating mu,
                              floating a, floating b, bint relu) noexcept nogil:
    """y = (x - mu) * a + b (subtracting first keeps float32 accurate when |mean| >> std); with
    ``relu``, then y < 0 ? 0 : y (ReLU's rule: NaN and -0 kept), bitwise a ReLU pass after."""
    cdef Py_ssize_t k
    cdef floating t
    if relu:
        for k in range(n):
            t = (x[k] - mu) * a + b
            y[k] = 0 if t < 0 else t
        return
    for k in range(n):
        y[k] = (x[k] - mu) * a + b


cdef inline void _grad_apply(const floating* g, const floating* x, floating* dx, Py_ssize_t n,
                             floating mu, floating a, floating k1, floating k0) noexcept nogil:
    """dx = a * (g - (x - mu) * k1 - k0)."""
    cdef Py_ssize_t k
    for k in range(n):
        dx[k] = a * (g[k] - (x[k] - mu) * k1 - k0)


cdef inline double _channel_stats(const floating* x0, Py_ssize_t N, Py_ssize_t S,
                                  Py_ssize_t stride, double* mean) noexcept nogil:
    """Mean (into *mean) and biased variance (returned) of the N rows
    x0[n*stride : n*stride + S] (Chan's merge). The variance is returned, not written through a
    pointer, so that the caller's prange sees an assignment and keeps it thread-private."""
    cdef Py_ssize_t n, s, len_, blk = BLOCK
    cdef double cnt = 0, mu = 0, m2 = 0, bmu, bm2, delta, tot
    cdef floating c
    cdef const floating* p
    cdef Py_ssize_t rows, group = BLOCK // S if S > 0 else 1
    cdef Py_ssize_t dist = _pf_dist(S, sizeof(floating))
    if 2 * S <= BLOCK:
        # Short rows: blocks of `group` whole rows (at most BLOCK values), one reduction each.
        _prefetch_rows(x0, min(dist, N), stride * sizeof(floating), S * sizeof(floating))
        n = 0
        while n < N:
            rows = min(group, N - n)
            len_ = rows * S
            p = x0 + n * stride
            if floating is float:
                bmu = nl_sum_rows_f(p, rows, stride, S, N - n, dist) / len_
            else:
                bmu = nl_sum_rows_d(p, rows, stride, S, N - n, dist) / len_
            n = n + rows
            c = <floating> bmu
            if floating is float:
                bm2 = nl_sumsq_rows_f(p, rows, stride, S, c)
            else:
                bm2 = nl_sumsq_rows_d(p, rows, stride, S, c)
            bm2 = bm2 - len_ * (bmu - c) * (bmu - c)
            tot = cnt + len_
            delta = bmu - mu
            mu = mu + delta * (len_ / tot)
            m2 = m2 + bm2 + delta * delta * (cnt * len_ / tot)
            cnt = tot
        mean[0] = mu
        return m2 / cnt if m2 > 0 else 0.0
    for n in range(N):
        if n + dist < N:
            nl_prefetch(x0 + (n + dist) * stride, S * sizeof(floating))
        s = 0
        while s < S:
            len_ = min(blk, S - s)
            p = x0 + n * stride + s
            s = s + len_
            bmu = _lane_sum(p, len_) / len_
            c = <floating> bmu
            # M2 about the block mean from the sum about the rounded centre c.
            bm2 = _lane_sumsq(p, len_, c) - len_ * (bmu - c) * (bmu - c)
            tot = cnt + len_
            delta = bmu - mu
            mu = mu + delta * (len_ / tot)
            m2 = m2 + bm2 + delta * delta * (cnt * len_ / tot)
            cnt = tot
    mean[0] = mu
    return m2 / cnt if m2 > 0 else 0.0  # the centre correction can leave -tiny for constants


def bn_forward_train(const floating[:, :, ::1] x,   # IN  (N, C, S), N*S >= 1
                     const floating[::1] weight,    # IN  (C,) gamma (ones without affine)
                     const floating[::1] bias,      # IN  (C,) beta (zeros without affine)
                     floating[:, :, ::1] y,         # OUT (N, C, S)
                     double[::1] mean,              # OUT (C,) batch mean
                     double[::1] invstd,            # OUT (C,) 1 / sqrt(biased var + eps)
                     floating[::1] running_mean,    # IN/OUT (C,) updated when `update`
                     floating[::1] running_var,     # IN/OUT (C,) updated when `update`
                     double eps, double factor, bint update, int n_threads,
                     bint relu=False):
    """Training forward: per channel mu = mean(x), var = mean((x - mu)^2),
    y = (x - mu) * gamma / sqrt(var + eps) + beta (then max(y, 0) as ReLU with `relu`); with
    `update`,
    running_mean = factor*mu + (1-factor)*running_mean and
    running_var = factor*var*m/(m-1) + (1-factor)*running_var (m = N*S, unbiased variance).

    Two passes per channel: statistics (blocks merged in n order), then y.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2], c, n
    cdef Py_ssize_t stride = C * S
    cdef double m = <double> (N * S)
    cdef double inv, var, unbiased
    cdef floating mu, a, b
    cdef bint split = N * S * <Py_ssize_t> sizeof(floating) >= SPLIT_BYTES
    if N * S == 0 or C == 0:
        return
    # Race-free: iteration c writes only mean[c], invstd[c], running_*[c] and y[:, c, :].
    for c in prange(C, nogil=True, schedule='static', num_threads=n_threads):
        var = _channel_stats(&x[0, c, 0], N, S, stride, &mean[c])
        inv = 1.0 / sqrt(var + eps)
        invstd[c] = inv
        if update:
            unbiased = var * m / (m - 1) if m > 1 else var
            running_mean[c] = <floating> (factor * mean[c] + (1 - factor) * running_mean[c])
            running_var[c] = <floating> (factor * unbiased + (1 - factor) * running_var[c])
        if split:
            continue
        mu = <floating> mean[c]
        a = <floating> (weight[c] * inv)
        b = bias[c]
        # Rows in reverse: the last rows read by the statistics pass are the likeliest cached.
        for n in range(N - 1, -1, -1):
            _scale_shift(&x[n, c, 0], &y[n, c, 0], S, mu, a, b, relu)
    if split:
        _normalise_rows(x, mean, invstd, weight, bias, y, n_threads, relu)


def bn_forward_eval(const floating[:, :, ::1] x,   # IN  (N, C, S)
                    const double[::1] mean,        # IN  (C,) statistics to normalise with
                    const double[::1] invstd,      # IN  (C,) 1 / sqrt(var + eps)
                    const floating[::1] weight,    # IN  (C,) gamma
                    const floating[::1] bias,      # IN  (C,) beta
                    floating[:, :, ::1] y,         # OUT (N, C, S)
                    int n_threads, bint relu=False):
    """Forward with given statistics: y = (x - mean) * gamma * invstd + beta (then ReLU with
    `relu`). One pass."""
    if x.shape[0] * x.shape[2] == 0 or x.shape[1] == 0:
        return
    _normalise_rows(x, mean, invstd, weight, bias, y, n_threads, relu)


cdef void _normalise_rows(const floating[:, :, ::1] x, const double[::1] mean,
                          const double[::1] invstd, const floating[::1] weight,
                          const floating[::1] bias, floating[:, :, ::1] y,
                          int n_threads, bint relu) noexcept nogil:
    """y[n, c] = (x[n, c] - mean[c]) * (gamma[c] * invstd[c]) + beta[c] (in x's type), rows
    in memory order (parallel over n): long streams the prefetchers follow, where a channel's
    rows, C*S values apart, each start a new stream (and often a new page). Over channels when
    there are fewer samples than threads. The same values in any order."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2], c, n
    cdef floating mu, a, b
    if N >= n_threads:
        # Race-free: iteration n writes only y[n].
        for n in prange(N, schedule='static', num_threads=n_threads):
            for c in range(C):
                mu = <floating> mean[c]
                a = <floating> (weight[c] * invstd[c])
                b = bias[c]
                _scale_shift(&x[n, c, 0], &y[n, c, 0], S, mu, a, b, relu)
    else:
        # Race-free: iteration c writes only y[:, c, :].
        for c in prange(C, schedule='static', num_threads=n_threads):
            mu = <floating> mean[c]
            a = <floating> (weight[c] * invstd[c])
            b = bias[c]
            for n in range(N):
                _scale_shift(&x[n, c, 0], &y[n, c, 0], S, mu, a, b, relu)


def bn_backward(const floating[:, :, ::1] x,     # IN  (N, C, S) forward input
                const floating[:, :, ::1] dy,    # IN  (N, C, S) gradient of y
                const double[::1] mean,          # IN  (C,) statistics used by the forward pass
                const double[::1] invstd,        # IN  (C,) 1 / sqrt(var + eps)
                const floating[::1] weight,      # IN  (C,) gamma
                floating[:, :, ::1] dx,          # OUT (N, C, S)
                floating[::1] dweight,           # OUT (C,) sum(dy * xhat) (summed in float64)
                floating[::1] dbias,             # OUT (C,) sum(dy) (summed in float64)
                bint training, int n_threads):
    """Backward. Pass 1: dbeta = sum g, dgamma = invstd * sum g*(x - mu).
    Pass 2, training (statistics from the batch):
    dx = gamma*invstd * (g - dbeta/m - xhat*dgamma/m), xhat = (x - mu)*invstd;
    eval (fixed statistics): dx = gamma*invstd * g.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2], c, n, dist
    cdef double m = <double> (N * S)
    cdef double sg, sgx, inv
    cdef floating mu, a, k1, k0
    cdef double sums[2 * SPLIT_MAX_C]
    cdef bint split = (C <= SPLIT_MAX_C
                       and N * S * <Py_ssize_t> sizeof(floating) >= SPLIT_BYTES)
    if C == 0:
        return
    # Race-free: iteration c writes only dweight[c], dbias[c], sums[2c:2c+2] and dx[:, c, :].
    for c in prange(C, nogil=True, schedule='static', num_threads=n_threads):
        sg = 0
        sgx = 0
        if 0 < S and 2 * S <= BLOCK:
            _rows_grad_sums(&dy[0, c, 0], &x[0, c, 0], N, S, C * S, mean[c], &sg, &sgx)
        else:
            dist = _pf_dist(S, sizeof(floating))
            for n in range(N):
                if n + dist < N:
                    nl_prefetch(&dy[n + dist, c, 0], S * sizeof(floating))
                    nl_prefetch(&x[n + dist, c, 0], S * sizeof(floating))
                _lane_grad_sums(&dy[n, c, 0], &x[n, c, 0], S, mean[c], &sg, &sgx)
        inv = invstd[c]
        dbias[c] = <floating> sg
        dweight[c] = <floating> (sgx * inv)
        if split:
            sums[2 * c] = sg
            sums[2 * c + 1] = sgx
            continue
        mu = <floating> mean[c]
        a = <floating> (weight[c] * inv)
        if training:
            k1 = <floating> (inv * inv * sgx / m)
            k0 = <floating> (sg / m)
        else:
            k1 = 0
            k0 = 0
        # Rows in reverse: the last rows read by the first pass are the likeliest still cached.
        for n in range(N - 1, -1, -1):
            _grad_apply(&dy[n, c, 0], &x[n, c, 0], &dx[n, c, 0], S, mu, a, k1, k0)
    if not split:
        return
    # Race-free: iteration n writes only dx[n].
    for n in prange(N, nogil=True, schedule='static', num_threads=n_threads):
        for c in range(C):
            inv = invstd[c]
            mu = <floating> mean[c]
            a = <floating> (weight[c] * inv)
            if training:
                k1 = <floating> (inv * inv * sums[2 * c + 1] / m)
                k0 = <floating> (sums[2 * c] / m)
            else:
                k1 = 0
                k0 = 0
            _grad_apply(&dy[n, c, 0], &x[n, c, 0], &dx[n, c, 0], S, mu, a, k1, k0)

"""Batch normalisation forward and backward (formulas: DESIGN.md section 3).

Arrays are viewed as ``(N, C, S)``: ``S = H*W`` for BatchNorm2d, ``L`` or 1 for BatchNorm1d. Each
channel ``c`` is reduced over ``(n, s)``, ``m = N*S`` values.

Parallel scheme: ``prange`` over channels; a thread owns every output element of its channels
(``y[:, c, :]``, ``dx[:, c, :]``) and the per-channel statistics, so no two iterations write the
same memory. Each channel is processed start to finish by its thread (statistics pass, then the
element pass), so the second pass usually reads the channel's data from cache.

Summation order: per channel, the data is cut into blocks (one ``(n, c)`` row of S values, split
further into at most ``BLOCK`` values). Within a block the sums use 8 interleaved float64
accumulators (lane ``l`` takes elements ``l, l+8, ...``; the lanes are added in a fixed tree and
the tail in index order); float32 input is accumulated in float64. The forward statistics are the
block mean and the sum of squared deviations from it (two reads of a block that sits in L1), merged
block after block in ``n`` order with Chan et al.'s pairwise update. Every order is fixed by the
shapes alone, so results are bitwise identical for any thread count.
"""

from cython.parallel cimport prange
from cython cimport floating
from libc.math cimport sqrt

cdef enum:
    BLOCK = 1024  # values per block of the statistics pass


# The float64 lane sums, written with GCC/Clang vector extensions so that they are vectorised on
# every build (the scalar form of these loops is not: without -ffast-math the compiler may not
# reorder the additions). Lane l (of 8, held in two 4-double vectors) takes elements l, l+8, ...;
# the tail (n % 8 values) continues lane 0 in index order, then the lanes are added in a fixed
# tree. The same order on every instruction set.
cdef extern from *:
    """
    #include <stddef.h>
    #include <string.h>
    /* Two 4-double halves (lanes 0-3 and 4-7): one YMM register each on AVX2. */
    typedef double nl_d4 __attribute__((vector_size(32)));
    typedef float nl_f4 __attribute__((vector_size(16)));
    static inline nl_d4 nl_load_f(const float *p) {
        nl_f4 v; memcpy(&v, p, sizeof v); return __builtin_convertvector(v, nl_d4);
    }
    static inline nl_d4 nl_load_d(const double *p) { nl_d4 v; memcpy(&v, p, sizeof v); return v; }
    /* Lane 0 continued by the tail, then the fixed tree over the 8 lanes. */
    static inline double nl_finish(nl_d4 lo, nl_d4 hi, double lane0) {
        return ((lane0 + lo[1]) + (lo[2] + lo[3])) + ((hi[0] + hi[1]) + (hi[2] + hi[3]));
    }
    #define NL_DEFINE(SUF, T)                                                                \
    static double nl_sum_##SUF(const T *p, ptrdiff_t n) {                                     \
        nl_d4 lo = {0}, hi = {0}; ptrdiff_t k, n8 = n - n % 8; double a0;                     \
        for (k = 0; k < n8; k += 8) {                                                         \
            lo = lo + nl_load_##SUF(p + k); hi = hi + nl_load_##SUF(p + k + 4);               \
        }                                                                                     \
        a0 = lo[0];                                                                           \
        for (k = n8; k < n; k++) a0 = a0 + (double)p[k];                                      \
        return nl_finish(lo, hi, a0);                                                         \
    }                                                                                         \
    static double nl_sumsq_dev_##SUF(const T *p, ptrdiff_t n, double mu) {                    \
        nl_d4 lo = {0}, hi = {0}, d, e; ptrdiff_t k, n8 = n - n % 8; double a0, t;            \
        for (k = 0; k < n8; k += 8) {                                                         \
            d = nl_load_##SUF(p + k) - mu; e = nl_load_##SUF(p + k + 4) - mu;                 \
            lo = lo + d * d; hi = hi + e * e;                                                 \
        }                                                                                     \
        a0 = lo[0];                                                                           \
        for (k = n8; k < n; k++) { t = (double)p[k] - mu; a0 = a0 + t * t; }                  \
        return nl_finish(lo, hi, a0);                                                         \
    }                                                                                         \
    static void nl_grad_sums_##SUF(const T *g, const T *x, ptrdiff_t n, double mu,           \
                                   double *sg, double *sgx) {                                 \
        nl_d4 alo = {0}, ahi = {0}, blo = {0}, bhi = {0}, glo, ghi;                           \
        ptrdiff_t k, n8 = n - n % 8; double a0, b0;                                           \
        for (k = 0; k < n8; k += 8) {                                                         \
            glo = nl_load_##SUF(g + k); ghi = nl_load_##SUF(g + k + 4);                       \
            alo = alo + glo; ahi = ahi + ghi;                                                 \
            blo = blo + glo * (nl_load_##SUF(x + k) - mu);                                    \
            bhi = bhi + ghi * (nl_load_##SUF(x + k + 4) - mu);                                \
        }                                                                                     \
        a0 = alo[0]; b0 = blo[0];                                                             \
        for (k = n8; k < n; k++) {                                                            \
            a0 = a0 + (double)g[k]; b0 = b0 + (double)g[k] * ((double)x[k] - mu);             \
        }                                                                                     \
        *sg = *sg + nl_finish(alo, ahi, a0); *sgx = *sgx + nl_finish(blo, bhi, b0);           \
    }
    NL_DEFINE(f, float)
    NL_DEFINE(d, double)
    """
    double nl_sum_f(const float* p, Py_ssize_t n) noexcept nogil
    double nl_sum_d(const double* p, Py_ssize_t n) noexcept nogil
    double nl_sumsq_dev_f(const float* p, Py_ssize_t n, double mu) noexcept nogil
    double nl_sumsq_dev_d(const double* p, Py_ssize_t n, double mu) noexcept nogil
    void nl_grad_sums_f(const float* g, const float* x, Py_ssize_t n, double mu,
                        double* sg, double* sgx) noexcept nogil
    void nl_grad_sums_d(const double* g, const double* x, Py_ssize_t n, double mu,
                        double* sg, double* sgx) noexcept nogil


cdef inline double _lane_sum(const floating* p, Py_ssize_t n) noexcept nogil:
    """sum(p[0:n]) in float64 (8 lanes, fixed order)."""
    if floating is float:
        return nl_sum_f(p, n)
    else:
        return nl_sum_d(p, n)


cdef inline double _lane_sumsq_dev(const floating* p, Py_ssize_t n, double mu) noexcept nogil:
    """sum((p[0:n] - mu)**2) in float64 (8 lanes, fixed order)."""
    if floating is float:
        return nl_sumsq_dev_f(p, n, mu)
    else:
        return nl_sumsq_dev_d(p, n, mu)


cdef inline void _lane_grad_sums(const floating* g, const floating* p, Py_ssize_t n, double mu,
                                 double* sg, double* sgx) noexcept nogil:
    """sg += sum(g), sgx += sum(g * (p - mu)) over n values, float64 lanes (fixed order)."""
    if floating is float:
        nl_grad_sums_f(g, p, n, mu, sg, sgx)
    else:
        nl_grad_sums_d(g, p, n, mu, sg, sgx)


cdef inline void _scale_shift(const floating* x, floating* y, Py_ssize_t n, floating mu,
                              floating a, floating b) noexcept nogil:
    """y = (x - mu) * a + b (subtracting first keeps float32 accurate when |mean| >> std)."""
    cdef Py_ssize_t k
    for k in range(n):
        y[k] = (x[k] - mu) * a + b


cdef inline void _grad_apply(const floating* g, const floating* x, floating* dx, Py_ssize_t n,
                             floating mu, floating a, floating k1, floating k0) noexcept nogil:
    """dx = a * (g - (x - mu) * k1 - k0)."""
    cdef Py_ssize_t k
    for k in range(n):
        dx[k] = a * (g[k] - (x[k] - mu) * k1 - k0)


cdef inline void _channel_stats(const floating* x0, Py_ssize_t N, Py_ssize_t S,
                                Py_ssize_t stride, double* mean, double* var) noexcept nogil:
    """Mean and biased variance of the N rows x0[n*stride : n*stride + S] (Chan's merge)."""
    cdef Py_ssize_t n, s, len_, blk = BLOCK
    cdef double cnt = 0, mu = 0, m2 = 0, bmu, bm2, delta, tot
    cdef const floating* p
    for n in range(N):
        s = 0
        while s < S:
            len_ = min(blk, S - s)
            p = x0 + n * stride + s
            s = s + len_
            bmu = _lane_sum(p, len_) / len_
            bm2 = _lane_sumsq_dev(p, len_, bmu)
            tot = cnt + len_
            delta = bmu - mu
            mu = mu + delta * (len_ / tot)
            m2 = m2 + bm2 + delta * delta * (cnt * len_ / tot)
            cnt = tot
    mean[0] = mu
    var[0] = m2 / cnt


def bn_forward_train(const floating[:, :, ::1] x,   # IN  (N, C, S), N*S >= 1
                     const floating[::1] weight,    # IN  (C,) gamma (ones without affine)
                     const floating[::1] bias,      # IN  (C,) beta (zeros without affine)
                     floating[:, :, ::1] y,         # OUT (N, C, S)
                     double[::1] mean,              # OUT (C,) batch mean
                     double[::1] invstd,            # OUT (C,) 1 / sqrt(biased var + eps)
                     floating[::1] running_mean,    # IN/OUT (C,) updated when `update`
                     floating[::1] running_var,     # IN/OUT (C,) updated when `update`
                     double eps, double factor, bint update, int n_threads):
    """Training forward: per channel mu = mean(x), var = mean((x - mu)^2),
    y = (x - mu) * gamma / sqrt(var + eps) + beta; with `update`,
    running_mean = factor*mu + (1-factor)*running_mean and
    running_var = factor*var*m/(m-1) + (1-factor)*running_var (m = N*S, unbiased variance).

    Two passes per channel: statistics (blocks merged in n order), then y.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2], c, n
    cdef Py_ssize_t stride = C * S
    cdef double m = <double> (N * S)
    cdef double inv, var, unbiased
    cdef floating mu, a, b
    if N * S == 0 or C == 0:
        return
    # Race-free: iteration c writes only mean[c], invstd[c], running_*[c] and y[:, c, :].
    for c in prange(C, nogil=True, schedule='static', num_threads=n_threads):
        _channel_stats(&x[0, c, 0], N, S, stride, &mean[c], &var)
        inv = 1.0 / sqrt(var + eps)
        invstd[c] = inv
        if update:
            unbiased = var * m / (m - 1) if m > 1 else var
            running_mean[c] = <floating> (factor * mean[c] + (1 - factor) * running_mean[c])
            running_var[c] = <floating> (factor * unbiased + (1 - factor) * running_var[c])
        mu = <floating> mean[c]
        a = <floating> (weight[c] * inv)
        b = bias[c]
        for n in range(N):
            _scale_shift(&x[n, c, 0], &y[n, c, 0], S, mu, a, b)


def bn_forward_eval(const floating[:, :, ::1] x,   # IN  (N, C, S)
                    const double[::1] mean,        # IN  (C,) statistics to normalise with
                    const double[::1] invstd,      # IN  (C,) 1 / sqrt(var + eps)
                    const floating[::1] weight,    # IN  (C,) gamma
                    const floating[::1] bias,      # IN  (C,) beta
                    floating[:, :, ::1] y,         # OUT (N, C, S)
                    int n_threads):
    """Forward with given statistics: y = (x - mean) * gamma * invstd + beta. One pass."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2], c, n
    cdef floating mu, a, b
    if N * S == 0 or C == 0:
        return
    # Race-free: iteration c writes only y[:, c, :].
    for c in prange(C, nogil=True, schedule='static', num_threads=n_threads):
        mu = <floating> mean[c]
        a = <floating> (weight[c] * invstd[c])
        b = bias[c]
        for n in range(N):
            _scale_shift(&x[n, c, 0], &y[n, c, 0], S, mu, a, b)


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
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], S = x.shape[2], c, n
    cdef double m = <double> (N * S)
    cdef double sg, sgx, inv
    cdef floating mu, a, k1, k0
    if C == 0:
        return
    # Race-free: iteration c writes only dweight[c], dbias[c] and dx[:, c, :].
    for c in prange(C, nogil=True, schedule='static', num_threads=n_threads):
        sg = 0
        sgx = 0
        for n in range(N):
            _lane_grad_sums(&dy[n, c, 0], &x[n, c, 0], S, mean[c], &sg, &sgx)
        inv = invstd[c]
        dbias[c] = <floating> sg
        dweight[c] = <floating> (sgx * inv)
        mu = <floating> mean[c]
        a = <floating> (weight[c] * inv)
        if training:
            k1 = <floating> (inv * inv * sgx / m)
            k0 = <floating> (sg / m)
        else:
            k1 = 0
            k0 = 0
        for n in range(N):
            _grad_apply(&dy[n, c, 0], &x[n, c, 0], &dx[n, c, 0], S, mu, a, k1, k0)

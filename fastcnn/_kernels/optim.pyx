"""Optimiser updates (``fastcnn.optim``): SGD and Adam over flat parameter arrays, one pass.

Each function is the element-wise sequence of NumPy operations that ``fastcnn.optim`` runs on
arrays it cannot hand to a kernel (its twin: the same operations, each rounded to the array's
type, in the same order), fused into one pass over the elements instead of five to twelve.
Scalars are rounded to the array's type first, as NumPy does with a Python float. The C below is
compiled without contracting a multiply and an add into one fused multiply-add (which would round
once where NumPy rounds twice), so the results are bitwise NumPy's. Blocks of BLOCK elements run
in parallel (each element depends only on itself): the same bits for any thread count.
"""

from cython.parallel cimport prange
from cython cimport floating

include "_threads.pxi"

cdef enum:
    BLOCK = 8192  # elements per parallel iteration

cdef extern from *:
    """
    #include <math.h>
    #include <stddef.h>
    #if defined(__clang__)
    #pragma STDC FP_CONTRACT OFF
    #elif defined(__GNUC__)
    #pragma GCC push_options
    #pragma GCC optimize ("fp-contract=off")
    #endif
    /* SGD, as fastcnn.optim.SGD._update:
       d = wd ? w*wd + g : g;  with momentum: b = first ? d : v*m + (damp ? d*(1 - damp) : d),
       v = b, s = nesterov ? b*m + d : b; without: s = d;  w = w - s*lr.
       The settings are the same for every element: they select between values computed for
       all (blends), so that the loops vectorise; only the stores differ between functions. */
    #define FO_DEFINE(T, SUF, SQRT)                                                            \
    static void fo_sgd_##SUF(T *restrict w, const T *restrict g, T *restrict v, ptrdiff_t n,  \
                             T lr, T wd, T m, T damp1, int use_wd, int use_m, int use_damp,   \
                             int nesterov, int first) {                                       \
        if (!use_m) {                                                                         \
            for (ptrdiff_t i = 0; i < n; i++) {                                               \
                T dw = w[i] * wd; dw = dw + g[i];                                             \
                T s = use_wd ? dw : g[i];                                                     \
                s = s * lr;                                                                   \
                w[i] = w[i] - s;                                                              \
            }                                                                                 \
            return;                                                                           \
        }                                                                                     \
        for (ptrdiff_t i = 0; i < n; i++) {                                                   \
            T dw = w[i] * wd; dw = dw + g[i];                                                 \
            T d = use_wd ? dw : g[i];                                                         \
            T b = v[i] * m, u = d * damp1;                                                    \
            b = b + (use_damp ? u : d);                                                       \
            b = first ? d : b;                                                                \
            v[i] = b;                                                                         \
            T sn = b * m; sn = sn + d;                                                        \
            T s = nesterov ? sn : b;                                                          \
            s = s * lr;                                                                       \
            w[i] = w[i] - s;                                                                  \
        }                                                                                     \
    }                                                                                         \
    /* Adam / AdamW, as fastcnn.optim.Adam._update: AdamW first scales w by decay (1 - lr*wd) \
       and uses g; Adam uses d = w*wd + g (use_wd). m = m + (d - m)*c1; v = v*b2 + (d*d)*c2;  \
       with amsgrad vmax = max(vmax, v) (NaN kept) stands for v; then                        \
       w = w - (m / (sqrt(v)/rc2 + eps)) * step. */                                          \
    static inline void fo_adam_body_##SUF(T *restrict w, const T *restrict g, T *restrict m,  \
                                          T *restrict v, T *restrict vmax, ptrdiff_t n, T wd, \
                                          T decay, T c1, T b2, T c2, T rc2, T eps, T step,    \
                                          int use_wd, int decoupled, int amsgrad) {           \
        for (ptrdiff_t i = 0; i < n; i++) {                                                   \
            T wi = w[i], t, mi, vi;                                                           \
            T wdec = wi * decay, dw = wi * wd; dw = dw + g[i];                                \
            T d = (!decoupled && use_wd) ? dw : g[i];                                         \
            wi = (decoupled && use_wd) ? wdec : wi;                                           \
            t = d - m[i]; t = t * c1; mi = m[i] + t; m[i] = mi;                               \
            vi = v[i] * b2; t = d * d; t = t * c2; vi = vi + t; v[i] = vi;                    \
            if (amsgrad) {                                                                    \
                T a = vmax[i];                                                                \
                a = (a != a || a > vi) ? a : vi;                                              \
                vmax[i] = a; vi = a;                                                          \
            }                                                                                 \
            t = SQRT(vi); t = t / rc2; t = t + eps; t = mi / t; t = t * step;                 \
            w[i] = wi - t;                                                                    \
        }                                                                                     \
    }                                                                                         \
    static void fo_adam_##SUF(T *w, const T *g, T *m, T *v, T *vmax, ptrdiff_t n, T wd,       \
                              T decay, T c1, T b2, T c2, T rc2, T eps, T step, int use_wd,    \
                              int decoupled, int amsgrad) {                                   \
        if (amsgrad)   /* a constant 1 / 0: one loop each, the maximum's store only here */   \
            fo_adam_body_##SUF(w, g, m, v, vmax, n, wd, decay, c1, b2, c2, rc2, eps, step,    \
                               use_wd, decoupled, 1);                                         \
        else                                                                                  \
            fo_adam_body_##SUF(w, g, m, v, NULL, n, wd, decay, c1, b2, c2, rc2, eps, step,    \
                               use_wd, decoupled, 0);                                         \
    }
    FO_DEFINE(float, f, sqrtf)
    FO_DEFINE(double, d, sqrt)
    #if defined(__GNUC__) && !defined(__clang__)
    #pragma GCC pop_options
    #endif
    """
    void fo_sgd_f(float* w, const float* g, float* v, Py_ssize_t n, float lr, float wd, float m,
                  float damp1, int use_wd, int use_m, int use_damp, int nesterov,
                  int first) noexcept nogil
    void fo_sgd_d(double* w, const double* g, double* v, Py_ssize_t n, double lr, double wd,
                  double m, double damp1, int use_wd, int use_m, int use_damp, int nesterov,
                  int first) noexcept nogil
    void fo_adam_f(float* w, const float* g, float* m, float* v, float* vmax, Py_ssize_t n,
                   float wd, float decay, float c1, float b2, float c2, float rc2, float eps,
                   float step, int use_wd, int decoupled, int amsgrad) noexcept nogil
    void fo_adam_d(double* w, const double* g, double* m, double* v, double* vmax,
                   Py_ssize_t n, double wd, double decay, double c1, double b2, double c2,
                   double rc2, double eps, double step, int use_wd, int decoupled,
                   int amsgrad) noexcept nogil


cdef inline Py_ssize_t _blocks(Py_ssize_t n) noexcept nogil:
    return (n + BLOCK - 1) // BLOCK


def sgd(floating[::1] w,          # IN/OUT (n,) parameters
        const floating[::1] g,    # IN  (n,) gradient
        floating[::1] v,          # IN/OUT (n,) momentum buffer (read and written with momentum)
        double lr, double weight_decay, double momentum, double dampening, bint nesterov,
        bint first, int n_threads):
    """One SGD step (``fastcnn.optim.SGD``): ``first`` starts the momentum buffer as the
    gradient. The caller checks that the arrays have the same size."""
    cdef Py_ssize_t n = w.shape[0], blk, k0
    cdef int use_wd = weight_decay != 0, use_m = momentum != 0, use_damp = dampening != 0
    cdef floating* pv
    if n == 0:
        return
    pv = &v[0] if use_m else NULL
    n_threads = _threads_for(n * MOVE, n_threads)
    # Race-free: block blk owns elements [blk*BLOCK, (blk+1)*BLOCK) of w and v.
    for blk in prange(_blocks(n), nogil=True, schedule='static', num_threads=n_threads):
        k0 = blk * BLOCK
        if floating is float:
            fo_sgd_f(&w[k0], &g[k0], NULL if pv == NULL else pv + k0, min(BLOCK, n - k0),
                     <float> lr, <float> weight_decay, <float> momentum,
                     <float> (1 - dampening), use_wd, use_m, use_damp, nesterov, first)
        else:
            fo_sgd_d(&w[k0], &g[k0], NULL if pv == NULL else pv + k0, min(BLOCK, n - k0),
                     lr, weight_decay, momentum, 1 - dampening, use_wd, use_m, use_damp,
                     nesterov, first)


def adam(floating[::1] w,          # IN/OUT (n,) parameters
         const floating[::1] g,    # IN  (n,) gradient
         floating[::1] m,          # IN/OUT (n,) first moment
         floating[::1] v,          # IN/OUT (n,) second moment
         floating[::1] vmax,       # IN/OUT (n,) running maximum of v (read with amsgrad only)
         double weight_decay, double decay, double beta1, double beta2, double root_c2,
         double eps, double step_size, bint decoupled, bint amsgrad, int n_threads):
    """One Adam (``decoupled``: AdamW, w scaled by ``decay`` = 1 - lr*weight_decay first) step
    (``fastcnn.optim.Adam``). The caller checks that the arrays have the same size."""
    cdef Py_ssize_t n = w.shape[0], blk, k0
    cdef int use_wd = weight_decay != 0
    if n == 0:
        return
    n_threads = _threads_for(n * MOVE, n_threads)
    # Race-free: block blk owns elements [blk*BLOCK, (blk+1)*BLOCK) of w, m, v and vmax.
    for blk in prange(_blocks(n), nogil=True, schedule='static', num_threads=n_threads):
        k0 = blk * BLOCK
        if floating is float:
            fo_adam_f(&w[k0], &g[k0], &m[k0], &v[k0], &vmax[k0], min(BLOCK, n - k0),
                      <float> weight_decay, <float> decay, <float> (1 - beta1), <float> beta2,
                      <float> (1 - beta2), <float> root_c2, <float> eps, <float> step_size,
                      use_wd, decoupled, amsgrad)
        else:
            fo_adam_d(&w[k0], &g[k0], &m[k0], &v[k0], &vmax[k0], min(BLOCK, n - k0),
                      weight_decay, decay, 1 - beta1, beta2, 1 - beta2, root_c2, eps,
                      step_size, use_wd, decoupled, amsgrad)

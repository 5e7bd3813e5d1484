/* Per-plane vector loops of the depthwise convolution kernels (dwconv.pyx): the positions of one
 * (image, channel) plane on the vector lanes, the weights as broadcast scalars.
 *
 * fc_dwcorr: c[t] (+)= sum_{k<K} w[k*ws] * x[off[k] + t]             t < P, P a multiple of NL
 *   (forward, and the input gradient with ws = -1 over the reversed kernel). Sums run
 *   k = 0, 1, ... in order; with acc the previous c[t] is the starting value.
 * fc_dwdot:  vacc[k*NL + l] += sum_{t < P, t = l mod NL} g[t] * x[off[k] + t]     k < K
 *   (weight gradient: lane l of tap k sums its positions in order).
 */
#ifndef FASTCNN_DWCONV_H
#define FASTCNN_DWCONV_H

#include "_convtiles.h"

#define FC_DEFINE_DWCORR(SUF, T, V, LOAD, STORE, NL)                                            \
static inline void fc_dwcorr_##SUF(const T *x, const ptrdiff_t *off, const T *w, ptrdiff_t ws,   \
                                   ptrdiff_t K, ptrdiff_t P, T *c, int acc)                      \
{                                                                                                \
    ptrdiff_t t = 0;                                                                             \
    for (; t + 4 * NL <= P; t += 4 * NL) {                                                       \
        V a0 = (V){0}, a1 = (V){0}, a2 = (V){0}, a3 = (V){0};                                    \
        if (acc) {                                                                               \
            a0 = LOAD(c + t); a1 = LOAD(c + t + NL);                                             \
            a2 = LOAD(c + t + 2 * NL); a3 = LOAD(c + t + 3 * NL);                                \
        }                                                                                        \
        for (ptrdiff_t k = 0; k < K; k++) {                                                      \
            const T *xk = x + off[k] + t;                                                        \
            T s = w[k * ws];                                                                     \
            a0 += s * LOAD(xk); a1 += s * LOAD(xk + NL);                                         \
            a2 += s * LOAD(xk + 2 * NL); a3 += s * LOAD(xk + 3 * NL);                            \
        }                                                                                        \
        STORE(c + t, a0); STORE(c + t + NL, a1);                                                 \
        STORE(c + t + 2 * NL, a2); STORE(c + t + 3 * NL, a3);                                    \
    }                                                                                            \
    for (; t < P; t += NL) {                                                                     \
        V a0 = acc ? LOAD(c + t) : (V){0};                                                       \
        for (ptrdiff_t k = 0; k < K; k++) a0 += w[k * ws] * LOAD(x + off[k] + t);                \
        STORE(c + t, a0);                                                                        \
    }                                                                                            \
}

#define FC_DEFINE_DWDOT_BLOCK(M, SUF, T, V, LOAD, STORE, NL)                                    \
static inline void fc_dwdot##M##_##SUF(const T *x, const ptrdiff_t *off, const T *g,             \
                                       ptrdiff_t P, T *vacc)                                     \
{                                                                                                \
    V a[M];                                                                                      \
    const T *xr[M];                                                                              \
    for (int b = 0; b < M; b++) { a[b] = LOAD(vacc + b * NL); xr[b] = x + off[b]; }              \
    for (ptrdiff_t t = 0; t < P; t += NL) {                                                      \
        V gv = LOAD(g + t);                                                                      \
        for (int b = 0; b < M; b++) a[b] += gv * LOAD(xr[b] + t);                                \
    }                                                                                            \
    for (int b = 0; b < M; b++) STORE(vacc + b * NL, a[b]);                                      \
}

#define FC_DEFINE_DWDOT(SUF, T, NL)                                                             \
static inline void fc_dwdot_##SUF(const T *x, const ptrdiff_t *off, const T *g, ptrdiff_t K,     \
                                  ptrdiff_t P, T *vacc)                                          \
{                                                                                                \
    ptrdiff_t k = 0;                                                                             \
    for (; k + 9 <= K; k += 9) fc_dwdot9_##SUF(x, off + k, g, P, vacc + k * NL);                 \
    for (; k + 3 <= K; k += 3) fc_dwdot3_##SUF(x, off + k, g, P, vacc + k * NL);                 \
    for (; k < K; k++) fc_dwdot1_##SUF(x, off + k, g, P, vacc + k * NL);                         \
}

FC_DEFINE_DWCORR(f, float, fc_gvf, fc_gload_f, fc_gstore_f, FC_NL_F)
FC_DEFINE_DWCORR(d, double, fc_gvd, fc_gload_d, fc_gstore_d, FC_NL_D)
FC_DEFINE_DWDOT_BLOCK(9, f, float, fc_gvf, fc_gload_f, fc_gstore_f, FC_NL_F)
FC_DEFINE_DWDOT_BLOCK(3, f, float, fc_gvf, fc_gload_f, fc_gstore_f, FC_NL_F)
FC_DEFINE_DWDOT_BLOCK(1, f, float, fc_gvf, fc_gload_f, fc_gstore_f, FC_NL_F)
FC_DEFINE_DWDOT_BLOCK(9, d, double, fc_gvd, fc_gload_d, fc_gstore_d, FC_NL_D)
FC_DEFINE_DWDOT_BLOCK(3, d, double, fc_gvd, fc_gload_d, fc_gstore_d, FC_NL_D)
FC_DEFINE_DWDOT_BLOCK(1, d, double, fc_gvd, fc_gload_d, fc_gstore_d, FC_NL_D)
FC_DEFINE_DWDOT(f, float, FC_NL_F)
FC_DEFINE_DWDOT(d, double, FC_NL_D)

#endif
